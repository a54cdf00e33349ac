"""Gradient ascent on a TFLite model with the gradient estimated from interpreter invocations only.

The full input gradient (37,632 numbers for a 112x112x3 face) is out of reach of finite differences,
but its projection on a small declared subspace (k basis images, ``device.subspace``) is not: each
step perturbs the current image along k directions that span the subspace, evaluates the model on
all perturbed copies in batched invocations, and reads the k directional derivatives. The host's
autodiff probe computes the same projection exactly, so both halves are compared like for like.

- Perturbation size: the largest pixel change of each perturbation is ``epsilon_steps`` input
  quantisation steps (the manifest's input scale in normalised units). A quantised model only sees
  changes that cross its input grid, so the size is set in steps of that grid (about 16 steps are
  needed before first-stage int8 estimates are good). A float input has no grid: its step is
  ``FLOAT_INPUT_STEP`` = 1/8192, so the default 16 steps move the peak pixel by a quarter grey level
  (1/512), small enough to stay where a ReLU network is linear and far above float32 rounding.
- Directions: each step uses a random rotation of the basis drawn from ``finite_difference.seed``,
  so two models run with one plan see the same perturbations, and quantisation error does not line
  up with fixed basis images. The estimate is rotated back: gradients are plan-basis coefficients.
- Batching: the perturbed copies of every ascent in a step are concatenated and run in chunks of at
  most ``max_batch`` images, all chunks of one size (the last is padded) so the interpreter is
  resized at most when the step's total changes. Ascents that share an image and a basis (all
  targets of an image at step 0) share their perturbed copies: every target's objective is read from
  the same outputs.
- Disagreement (a plan whose objective is ``disagreement``): every row runs on two files, the probed one
  and the ``reference`` (the float file), and its objective is their cosine distance, 1 - cos, written
  0.5 * ||u - v||^2 for unit vectors u, v so that two equal outputs give exactly 0. The steps stay within
  the budget around the start image; the image kept is the one with the largest distance seen (the ascent
  need not rise at every step). With ``control`` > 0 the same budget is also spent on that many random
  perturbations per image (random subspace directions and random pixel signs, each at the full budget)
  and the largest distance they reach is reported beside the ascent's (``meta["control"]``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from . import subspace
from .plan import DEFAULT_OPTIONS, ProbePlan, ProbeResult, apply_step, objective_position

FLOAT_INPUT_STEP = 1.0 / 8192.0  # 16 steps = a quarter grey level under (p - 127.5) / 128
DEFAULT_MAX_BATCH = 64
SCHEMES = ("central", "forward")


def tap_output_key(runtime, tap: str) -> str:
    return runtime.taps[tap]["key"]


def input_step(runtime) -> float:
    """One input quantisation step in normalised units (``FLOAT_INPUT_STEP`` for a float model)."""
    scale = runtime.input_scale
    return float(scale) if scale else FLOAT_INPUT_STEP


def random_rotation(rng: np.random.Generator, k: int) -> np.ndarray:
    """A Haar-random k x k orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.diag(r))[None, :]


def validate_board_plan(plan: ProbePlan) -> None:
    """Refuse what finite differences on a board cannot do, saying what to use instead."""
    if plan.subspace.get("kind") == "full":
        raise ValueError(
            "subspace.kind is 'full': finite differences cannot estimate the full input gradient "
            f"({int(np.prod(plan.image_shape))} dimensions for {plan.image_shape} images; a random-direction "
            "estimate reaches a cosine of only about sqrt(n/d) to the true gradient with n invocations). "
            "Declare a small subspace, e.g. {'kind': 'dct', 'size': 4} (k=48) or "
            "{'kind': 'window', 'size': 5}, and compare with the host probe run on the same subspace")
    fd = plan.finite_difference
    if fd.get("scheme") not in SCHEMES:
        raise ValueError(f"finite_difference.scheme must be one of {SCHEMES}, got {fd.get('scheme')!r}")
    if not float(fd.get("epsilon_steps", 0)) > 0:
        raise ValueError(f"finite_difference.epsilon_steps must be > 0, got {fd.get('epsilon_steps')!r}")
    extras = {k: v for k, v in plan.options.items() if k != "clip" and v != DEFAULT_OPTIONS[k]}
    if extras:
        raise ValueError(f"options {sorted(extras)} are host-only extras (set {extras}); the board runs the "
                         "plain ascent: leave them at their defaults or run the plan with the host probe")


@dataclass
class _Target:
    key: str  # output key of the tap (of the compared output, for a disagreement objective)
    channel: int
    position: list[int] | None  # unit objective position, None for the channel mean
    basis_id: str


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos per row of two (n, ...) arrays, as 0.5 * ||u - v||^2 of the unit rows: exactly 0 when equal."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    u = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    v = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return 0.5 * np.sum((u - v) ** 2, axis=1)


def _output_key(runtime, plan: ProbePlan) -> str:
    """The output a disagreement plan compares."""
    if plan.objective["measure"] == "tap":
        return tap_output_key(runtime, plan.objective["tap"])
    return "embedding"


def _scorer(runtime, plan: ProbePlan, targets: list[_Target], reference=None):
    """batch -> objective of every target on every image of the batch, (b, targets)."""
    if not plan.disagreement:
        def score(batch: np.ndarray) -> np.ndarray:
            out = runtime.run(batch)
            return np.stack([_objective(np.asarray(out[t.key]), t) for t in targets], axis=1)
        return score
    key, ref_key = _output_key(runtime, plan), _output_key(reference, plan)

    def distance(batch: np.ndarray) -> np.ndarray:
        return cosine_distance(runtime.run(batch)[key], reference.run(batch)[ref_key])[:, None]
    return distance


def check_reference(runtime, reference, plan: ProbePlan) -> None:
    """Refuse a disagreement plan without a reference, or with one that does not compute the same output."""
    if reference is None:
        raise ValueError("a disagreement plan compares two files: run it with the reference file "
                         "(objective.reference names it on a board)")
    if tuple(reference.input_shape) != tuple(runtime.input_shape):
        raise ValueError(f"the reference file's input {tuple(reference.input_shape)} differs from the probed "
                         f"file's {tuple(runtime.input_shape)}")
    if plan.objective["measure"] == "tap":
        tap = plan.objective["tap"]
        if tap not in reference.taps or tap not in runtime.taps:
            raise ValueError(f"objective.tap {tap!r} must be a tap of both files (pass their probe files)")
    elif not ("embedding" in runtime.output_keys and "embedding" in reference.output_keys):
        raise ValueError("measure 'embedding' needs an embedding output in both files")


def _objective(values: np.ndarray, target: _Target) -> np.ndarray:
    """Objective per image of a tap output batch (n, h, w, c)."""
    if target.position is None:
        return values[..., target.channel].reshape(len(values), -1).mean(axis=1, dtype=np.float64)
    r, c = target.position
    return values[:, r, c, target.channel].astype(np.float64)


def _prepare_targets(runtime, plan: ProbePlan) -> tuple[list[_Target], dict[str, np.ndarray]]:
    """Per target: output key, objective position and its basis (shared between targets that agree)."""
    if plan.disagreement:
        spec = dict(plan.subspace)
        basis_id = json.dumps(spec, sort_keys=True)
        return ([_Target(_output_key(runtime, plan), 0, None, basis_id)],
                {basis_id: subspace.make_basis(spec, plan.image_shape)})
    targets, bases = [], {}
    for t in plan.targets:
        entry = runtime.taps[t["tap"]]
        map_hw = tuple(int(s) for s in entry["shape"][-3:-1])
        position = objective_position(plan.objective, map_hw)
        if position is not None and not (position[0] < map_hw[0] and position[1] < map_hw[1]):
            raise ValueError(f"objective.position {position} lies outside tap {t['tap']!r}'s {map_hw} map")
        spec = subspace.resolve_spec(plan.subspace, position, map_hw, plan.image_shape)
        basis_id = json.dumps(spec, sort_keys=True)
        if basis_id not in bases:
            bases[basis_id] = subspace.make_basis(spec, plan.image_shape)
        targets.append(_Target(tap_output_key(runtime, t["tap"]), t["channel"], position, basis_id))
    return targets, bases


class _Batcher:
    """Evaluates perturbed images in equal-size interpreter batches of at most ``max_batch``.

    Only each target's objective is kept per row, never the tap maps: a step has up to
    (images x targets x (2k + 1)) rows, and their maps would need far more memory than the model.
    """

    def __init__(self, score, targets: list[_Target], max_batch: int):
        self.score, self.targets, self.max_batch = score, targets, max_batch
        self.invocations = 0
        self.seconds = 0.0  # inside the interpreter: the floor an ascent step cannot go below

    def run(self, images: np.ndarray, directions: list[np.ndarray], rows: list[tuple[int, int, int, float]]
            ) -> np.ndarray:
        """rows: (image, basis group, direction, scale), direction -1 meaning the unperturbed image;
        returns the objective of every target on every row, (rows, targets)."""
        n_chunks = -(-len(rows) // self.max_batch)
        size = -(-len(rows) // n_chunks)
        objectives = np.zeros((len(rows), len(self.targets)))
        for c in range(n_chunks):
            chunk = rows[c * size:(c + 1) * size]
            batch = np.empty((size, *images.shape[1:]), np.float32)
            for b, (i, g, d, s) in enumerate(chunk):
                batch[b] = images[i] if d < 0 else images[i] + s * directions[g][d]
            batch[len(chunk):] = batch[0]  # padding keeps one interpreter shape per step
            started = time.perf_counter()
            scores = self.score(batch)
            self.seconds += time.perf_counter() - started
            self.invocations += 1
            objectives[c * size:c * size + len(chunk)] = scores[:len(chunk)]
        return objectives


def run_plan(runtime, plan: ProbePlan, max_batch: int = DEFAULT_MAX_BATCH, reference=None) -> ProbeResult:
    """Run ``plan`` on ``runtime`` (a ``device.runtime.Runtime``) by finite differences in its subspace
    (``reference``: the second runtime of a disagreement plan)."""
    validate_board_plan(plan)
    plan.validate(runtime.taps, runtime.input_shape)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if plan.disagreement:
        check_reference(runtime, reference, plan)
    targets, bases = _prepare_targets(runtime, plan)
    n, t_count, shape = len(plan.images), len(targets), plan.image_shape
    steps, fd = plan.steps, plan.finite_difference
    central = fd["scheme"] == "central"
    # A perturbation must cross the coarser of the two input grids to be seen by both files.
    peak = float(fd["epsilon_steps"]) * max(input_step(runtime), input_step(reference) if reference else 0.0)
    rng = np.random.default_rng(int(fd["seed"]))
    batcher = _Batcher(_scorer(runtime, plan, targets, reference), targets, max_batch)
    basis_ids = list(bases)
    k = bases[basis_ids[0]].shape[0]  # resolving a spec only moves a window, never changes k
    per_image = 1 + (2 * k if central else k)

    x = np.repeat(plan.images[:, None], t_count, axis=1)  # (n, T, H, W, C): one image per ascent
    best = x.copy() if plan.disagreement else None  # the most disagreeing image seen per ascent
    objective = np.zeros((n, t_count, steps + 1))
    gradients = np.zeros((n, t_count, steps, k))
    step_norms = np.zeros((n, t_count, steps))
    ranges = np.zeros((n, t_count, steps + 1, 2))
    invocations, evaluations, seconds, interpreter = [], [], [], []

    for step in range(steps + 1):
        started, before, inside = time.perf_counter(), batcher.invocations, batcher.seconds
        last = step == steps  # the last pass only reads the final objective
        # This step's directions: a seeded rotation of each basis; scales set the peak pixel change.
        rotations, directions, scales = [], [], []
        for b in basis_ids if not last else ():
            rot = random_rotation(rng, k)
            d = rot @ bases[b].astype(np.float64)
            rotations.append(rot)
            scales.append(peak / np.abs(d).max(axis=1))
            directions.append(d.astype(np.float32).reshape(k, *shape))
        # Ascents whose current image and basis agree share one group of rows.
        groups: dict[tuple[bytes, int], int] = {}
        group_of = np.zeros((n, t_count), int)
        group_images, group_basis = [], []
        for i in range(n):
            for j, t in enumerate(targets):
                b = basis_ids.index(t.basis_id)
                key = (hashlib.sha1(x[i, j].tobytes()).digest(), 0 if last else b)
                if key not in groups:
                    groups[key] = len(group_images)
                    group_images.append(x[i, j])
                    group_basis.append(b)
                group_of[i, j] = groups[key]
        rows_each = 1 if last else per_image
        rows = []
        for gi, b in enumerate(group_basis):
            rows.append((gi, b, -1, 0.0))
            for d in range(0 if last else k):
                rows.append((gi, b, d, scales[b][d]))
                if central:
                    rows.append((gi, b, d, -scales[b][d]))
        out = batcher.run(np.stack(group_images), directions, rows)

        for i in range(n):
            for j in range(t_count):
                gi = group_of[i, j]
                f = out[gi * rows_each:(gi + 1) * rows_each, j]
                objective[i, j, step] = f[0]
                if best is not None and f[0] > objective[i, j, :step].max(initial=-np.inf):
                    best[i, j] = x[i, j]
                ranges[i, j, step] = (x[i, j].min(), x[i, j].max())
                if last:
                    continue
                b = group_basis[gi]
                if central:
                    rotated = (f[1::2] - f[2::2]) / (2 * scales[b])
                else:
                    rotated = (f[1:] - f[0]) / scales[b]
                gradients[i, j, step] = rotations[b].T @ rotated  # back to the plan's basis
                # Image-space direction Bᵀ(B·g) = Dᵀ(D·g) for the rotated rows D = R·B.
                direction = (rotated @ directions[b].reshape(k, -1)).reshape(1, *shape)
                start = plan.images[i][None] if plan.disagreement else None
                x[i, j], rms = apply_step(x[i, j][None], direction, plan, start)
                step_norms[i, j, step] = rms[0]
        invocations.append(batcher.invocations - before)
        evaluations.append(len(rows))
        seconds.append(time.perf_counter() - started)
        interpreter.append(batcher.seconds - inside)

    meta = {
        "method": "finite-difference",
        "runtime": runtime.info(),
        "plan": plan.to_json(),
        "finite_difference": {
            "scheme": fd["scheme"], "seed": int(fd["seed"]), "epsilon_steps": float(fd["epsilon_steps"]),
            "input_step": input_step(runtime), "peak_perturbation": peak, "max_batch": max_batch,
            "basis_dims": k, "evaluations_per_ascent": per_image,
        },
        "invocations_per_step": invocations[:-1],
        "evaluations_per_step": evaluations[:-1],
        "seconds_per_step": seconds[:-1],
        "interpreter_seconds_per_step": interpreter[:-1],
        "final_invocations": invocations[-1],
    }
    if plan.disagreement:
        meta["disagreement"] = {"measure": plan.objective["measure"], "budget": plan.objective["budget"],
                                "reference_runtime": reference.info(), "final_images": "most disagreeing"}
        if plan.objective["control"]:
            meta["control"] = random_control(batcher, plan, bases[basis_ids[0]], rng)
    return ProbeResult(objective=objective, final_images=best if best is not None else x,
                       step_norms=step_norms, meta=meta, gradients=gradients, ranges=ranges)


def random_control(batcher: _Batcher, plan: ProbePlan, basis: np.ndarray, rng: np.random.Generator) -> dict:
    """The disagreement budget spent on chance: per start image, ``objective.control`` random perturbations,
    half along random directions of the plan's subspace, half of random pixel signs (the corners of the
    L-infinity ball), each scaled to the full budget; the largest distance each family reaches."""
    count, budget = int(plan.objective["control"]), float(plan.objective["budget"])
    shape = plan.image_shape
    families = {"subspace": count - count // 2, "sign": count // 2}
    worst: dict[str, list[float]] = {f: [] for f in families}
    for image in plan.images:
        for family, m in families.items():
            if not m:
                worst[family].append(0.0)
                continue
            if family == "subspace":
                d = rng.standard_normal((m, basis.shape[0])) @ basis.astype(np.float64)
            else:
                d = rng.choice((-1.0, 1.0), (m, int(np.prod(shape))))
            d *= budget / np.abs(d).max(axis=1, keepdims=True)
            tries = np.clip(image[None] + d.reshape(m, *shape).astype(np.float32), *plan.valid_range)
            rows = [(i, 0, -1, 0.0) for i in range(m)]
            worst[family].append(float(batcher.run(tries, [], rows)[:, 0].max()))
    return {"count": count, "budget": budget, **{f"worst_{f}": v for f, v in worst.items()},
            "worst": [max(a, b) for a, b in zip(*worst.values(), strict=True)]}
