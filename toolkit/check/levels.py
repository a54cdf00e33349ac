"""The three levels of the check: taps, features and identities, the float reference (the Keras model, or
a float TFLite file converted elsewhere) vs a quantized board."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np

from device.manifest import tap_entries
from device.plan import ProbePlan, ProbeResult

from ..evaluate import pair_scores, rank1_accuracy, verification_metrics
from ..probe import make_plan, run_plan
from ..probe.channels import choose_channels
from ..probe.compare import compare_ascents, cosine
from ..probe.reference import Reference, as_reference
from ..zoo import STAGES
from .boards import CHUNK, Board
from .metrics import ErrorSums

# The feature level's DCT subspace: 3x3 frequencies per channel, 27 directions, 55 evaluations per
# finite-difference step. Gradient estimates in it track autodiff at cosine >= 0.99 on float32 and int8
# first/middle stages (scripts/bench/fd_ascent.py), at a quarter of the cost of 8x8.
FEATURE_SUBSPACE = 3


def _activation_plan(ref: Reference, images: np.ndarray) -> ProbePlan:
    """A plan whose targets name every tap once: the board's activations job returns them all."""
    return ProbePlan(targets=[{"tap": t.name, "channel": 0} for t in ref.taps], images=images)


def tap_level(reference: keras.Model | Reference, board: Board, images: np.ndarray,
              scales: dict[str, float | None]) -> list[dict]:
    """Per tap, in depth order: SQNR, cosine, RMSE/scale, saturation, and the noise it adds over the tap
    before it (noise-to-signal ratio minus the previous tap's): the rank that localises a breakage.

    ``scales``: each tap's int8 quantization step (``tap_scales`` of the probe model's manifest)."""
    reference = as_reference(reference)
    taps = reference.taps
    sums = {t.name: ErrorSums() for t in taps}
    saturated = {t.name: [] for t in taps}
    for start in range(0, len(images), CHUNK):
        batch = images[start:start + CHUNK]
        ref = reference.tap_values(batch)
        got = board.activations(_activation_plan(reference, batch))
        for t in taps:
            sums[t.name].add(ref[t.name], got["values"][t.name])
            saturated[t.name].append(got["stats"][t.name].get("saturation"))
    rows, previous = [], 0.0
    for t in taps:
        errors = sums[t.name].result(scales.get(t.name))
        sat = [s for s in saturated[t.name] if s is not None]
        rows.append({"tap": t.name, "stage": t.stage, **errors,
                     "saturation": float(np.mean(sat)) if sat else None,
                     "noise_added": errors["noise_to_signal"] - previous})
        previous = errors["noise_to_signal"]
    return rows


def tap_scales(manifest: dict) -> dict[str, float | None]:
    """Each tap's int8 quantization step from a probe model's manifest (None for float tensors)."""
    return {name: (o.get("int8") or {}).get("scale") or o.get("scale")
            for name, o in tap_entries(manifest).items()}


def feature_plan(reference: keras.Model | Reference, images: np.ndarray,
                 subspace_size: int = FEATURE_SUBSPACE, steps: int = 20) -> ProbePlan:
    """The probe's default plan (5 channels per stage tap, the deepest tap of each stage) in a
    low-frequency DCT subspace.

    The check uses the ``normalized`` step rule: a quantized model's input is clamped to its calibrated
    range, so the method's raw steps (which leave the valid range at deep taps) would stall there."""
    ref = as_reference(reference)
    settings = {"steps": steps, "step_rule": "normalized", "subspace": {"kind": "dct", "size": subspace_size}}
    if ref.model is not None:
        return make_plan(ref.model, images, per_tap=5, **settings)
    deepest = {t.stage: t.name for t in ref.taps}
    names = [deepest[s] for s in STAGES if s in deepest]
    chosen = choose_channels(ref.tap_values(images, names), 5, "top")
    return ProbePlan(targets=[{"tap": t, "channel": int(c)} for t in names for c in chosen[t]],
                     images=np.asarray(images, np.float32), **settings)


def rescore(reference: keras.Model | Reference, board: Board, plan: ProbePlan, ascended: ProbeResult) -> dict:
    """Re-score the host's full-gradient ascent results on the quantized model.

    Per target: the objective float vs quantized on the same ascended image; per tap: the fraction of
    values at the int8 limits on the ascended images and on the start images."""
    n, t_count = ascended.final_images.shape[:2]
    flat = ascended.final_images.reshape(n * t_count, *plan.image_shape)
    quant = {t: [] for t in plan.taps}
    sat_ascended = {t: [] for t in plan.taps}
    for start in range(0, len(flat), CHUNK):
        got = board.activations(ProbePlan(targets=plan.targets, images=flat[start:start + CHUNK]))
        for t in plan.taps:
            quant[t].append(got["values"][t])
            sat_ascended[t].append(got["stats"][t].get("saturation"))
    start_stats = board.activations(ProbePlan(targets=plan.targets, images=plan.images))["stats"]
    floats = as_reference(reference).tap_values(flat, plan.taps)
    rows = []
    for j, target in enumerate(plan.targets):
        tap, c = target["tap"], target["channel"]
        q = np.concatenate(quant[tap]).reshape(n, t_count, *floats[tap].shape[1:])[:, j, ..., c]
        f = floats[tap].reshape(n, t_count, *floats[tap].shape[1:])[:, j, ..., c]
        rows.append({**target, "objective_float": float(f.mean()), "objective_quantized": float(q.mean()),
                     "map_cosine": cosine(f, q)})
    saturation = {}
    for t in plan.taps:
        values = [s for s in sat_ascended[t] if s is not None]
        saturation[t] = {"ascended": float(np.mean(values)) if values else None,
                         "start": start_stats[t].get("saturation")}
    return {"targets": rows, "saturation": saturation}


@dataclasses.dataclass(frozen=True)
class FeatureReference:
    """What every board's feature level is compared with, computed once: the plan by host autodiff on
    Keras (``host``) and by finite differences on the float TFLite (``fd_float``), how well the two agree
    (``estimator``: the estimator's own error), and the full-gradient host ascent (``full``).

    Without autodiff (a float TFLite reference) ``host`` is None, ``estimator`` empty, and the ascent
    re-scored on the quantized model is the float TFLite's own finite-difference one (``full`` is
    ``fd_float`` on ``plan``)."""

    plan: ProbePlan
    host: ProbeResult | None
    fd_float: ProbeResult
    estimator: list[dict]
    full_plan: ProbePlan
    full: ProbeResult

    def save(self, folder: Path) -> None:
        """plan.json and one result folder each for ``host``, ``fd_float`` and ``full``."""
        self.plan.save(folder / "plan.json")
        for name in ("host", "fd_float", "full"):
            if getattr(self, name) is not None:
                getattr(self, name).save(folder / name)


def feature_reference(reference: keras.Model | Reference, float_board: Board, images: np.ndarray,
                      subspace_size: int = FEATURE_SUBSPACE, steps: int = 20) -> FeatureReference:
    """The feature reference on ``images`` (``float_board``: the float32 TFLite files)."""
    ref = as_reference(reference)
    plan = feature_plan(ref, images, subspace_size, steps)
    fd_float = float_board.ascent(plan)
    if ref.model is None:
        return FeatureReference(plan, None, fd_float, [], plan, fd_float)
    full_plan = dataclasses.replace(plan, subspace={"kind": "full"})
    host = run_plan(ref.model, plan, progress=False)
    return FeatureReference(plan, host, fd_float, compare_ascents(plan, host, fd_float), full_plan,
                            run_plan(ref.model, full_plan, progress=False))


def feature_level(model: keras.Model | Reference, reference: FeatureReference, board: Board
                  ) -> tuple[dict, ProbeResult]:
    """The plan by finite differences on the quantized model, with the same perturbations as on the float
    TFLite (so estimator error cancels and what remains is quantization), and the full-gradient ascent
    re-scored on the quantized model; (the level's figures, the board's finite-difference result)."""
    plan = reference.plan
    fd_quant = board.ascent(plan)
    estimator = reference.estimator
    float_vs_quant = compare_ascents(plan, reference.fd_float, fd_quant)
    sat = rescore(model, board, reference.full_plan, reference.full)
    max_sat = [v["ascended"] for v in sat["saturation"].values() if v["ascended"] is not None]
    grad = [r["gradient_cosine"] for r in float_vs_quant if r["gradient_cosine"] is not None]
    return {
        "plan": plan.to_json(),
        "estimator": estimator,
        "float_vs_quantized": float_vs_quant,
        "rescored": sat,
        "summary": {
            "change_correlation": float(np.mean([r["change_correlation"] for r in float_vs_quant])),
            "gradient_cosine": float(np.mean(grad)) if grad else None,
            "max_saturation": max(max_sat) if max_sat else None,
            "estimator_change_correlation": (float(np.mean([r["change_correlation"] for r in estimator]))
                                             if estimator else None),
        },
    }, fd_quant


def identity_level(float_embeddings: np.ndarray, quant_embeddings: np.ndarray, labels: np.ndarray,
                   pairs) -> dict:
    """Embedding cosine per image; verification and rank-1 float vs quantized on the same pairs; the
    fraction of pairs whose same/different decision flips at the float model's threshold.

    ``accuracy_drop_se_pp``: the drop's standard error over pairs (paired: per-pair correctness float
    minus quantized at the float threshold), so that a verdict on a drop of a few pairs is read as such."""
    ef = _unit(float_embeddings)
    eq = _unit(quant_embeddings)
    per_image = np.sum(ef * eq, axis=1)
    issame = np.asarray(pairs.issame, bool)
    sf, sq = pair_scores(ef, pairs.left, pairs.right), pair_scores(eq, pairs.left, pairs.right)
    mf = verification_metrics(sf, issame, pairs.fold)
    mq = verification_metrics(sq, issame, pairs.fold)
    threshold = mf["threshold"]
    correct_diff = ((sf > threshold) == issame).astype(float) - ((sq > threshold) == issame)
    return {
        "embedding_cosine_mean": float(per_image.mean()),
        "embedding_cosine_min": float(per_image.min()),
        "embedding_cosine": per_image.tolist(),
        "float": {**mf, "rank1": rank1_accuracy(ef, labels)},
        "quantized": {**mq, "rank1": rank1_accuracy(eq, labels)},
        "accuracy_drop_pp": 100.0 * (mf["verification_accuracy"] - mq["verification_accuracy"]),
        "accuracy_drop_se_pp": float(100.0 * correct_diff.std(ddof=1) / np.sqrt(len(correct_diff))),
        "flip_fraction": float(np.mean((sf > threshold) != (sq > threshold))),
        "threshold": threshold,
        "pair_scores": {"float": sf.tolist(), "quantized": sq.tolist(), "issame": issame.tolist()},
    }


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
