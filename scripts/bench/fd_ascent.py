"""Board finite-difference gradients vs the host's autodiff gradient, on MobileFaceNet float32 and int8.

For one target per stage (first, middle, last; the channel with the largest mean response on the start
faces) and a sweep of subspaces, the board estimates the projected gradient at the start image from
interpreter invocations only (``device.ascent``), and the host computes the exact gradient g by autodiff
on the Keras model. Each row: cosine between the board's coefficients and B·g, the evaluations per
ascent step (``invocations_per_step``: 2k+1 central, k+1 forward, all batched), the interpreter calls
they take at --max-batch, and the share ||B·g|| / ||g|| of the full gradient that the subspace captures.
Timing: seconds per ascent step against the floor, the same interpreter calls on the same batch shapes
with nothing else around them, each bare call run right before the ascent's own call so that load from
other processes hits both alike; ``time_ratio_to_floor`` is the median over steps of the per-step
ratio, worst variant. Also reported: the share of each step spent inside the interpreter.

    python scripts/bench/fd_ascent.py [--model run/model.keras] [--json]

Without --model an untrained MobileFaceNet (seeded) is used, and the JSON says so under "model".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "att_faces"
GOALS = {"float32": 0.99, "int8": 0.9}
GOAL_EVALUATIONS = 64
GOAL_TIME_RATIO = 1.2


def parse_subspace(text: str) -> tuple[dict, str]:
    """``dct:3`` -> ({"kind": "dct", "size": 3}, "central"); ``dct:4:forward`` uses forward differences."""
    parts = text.split(":")
    kind, value = parts[0], int(parts[1])
    scheme = parts[2] if len(parts) > 2 else "central"
    key = {"dct": "size", "grid": "cells"}[kind]
    return {"kind": kind, key: value}, scheme


def load_faces(data: Path, n_images: int, n_calibration: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(start faces of distinct identities, calibration faces) as uint8; noise faces when data is absent."""
    if data.is_dir():
        from toolkit.data import load_identity_folders

        fs = load_identity_folders(data, image_size=size, progress=False)
        first_of = [int(np.flatnonzero(fs.labels == label)[0]) for label in range(n_images)]
        return fs.images[first_of], fs.images[:n_calibration]
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8),
            rng.integers(0, 256, (n_calibration, size, size, 3), dtype=np.uint8))


def host_gradients(model, images: np.ndarray, targets: list[dict]) -> np.ndarray:
    """Exact autodiff gradients of each target's mean-channel objective, (n, T, H, W, C)."""
    import keras
    import tensorflow as tf

    from toolkit.zoo import tap_layer_name

    out = []
    for t in targets:
        sub = keras.Model(model.input, model.get_layer(tap_layer_name(t["tap"])).output)
        x = tf.constant(images)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(tf.reduce_mean(sub(x, training=False)[..., t["channel"]], axis=(1, 2)))
        out.append(tape.gradient(total, x).numpy())
    return np.stack(out, axis=1).astype(np.float64)


class PairedFloor:
    """A runtime whose every call is paired with a bare call of the same batch shape, timed apart.

    Each ascent call and its floor then run back to back, so load from other processes on a shared
    machine hits both alike. The bare batch holds the start face, not zeros: int8 inference time
    depends on the data (zeros ran ~25 % faster here), so an all-zero floor would be too low.
    """

    def __init__(self, runtime, image: np.ndarray):
        self._runtime, self._image, self.floor_seconds = runtime, image, []

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def run(self, images: np.ndarray) -> dict:
        bare = np.repeat(self._image[None], len(images), axis=0)
        # Alternate which of the pair runs first, so neither gains from running second.
        out = self._runtime.run(images) if len(self.floor_seconds) % 2 else None
        t0 = time.perf_counter()
        self._runtime.run(bare)
        self.floor_seconds.append(time.perf_counter() - t0)
        return self._runtime.run(images) if out is None else out


def log(message: str) -> None:
    print(f"[fd_ascent] {message}", file=sys.stderr, flush=True)


def choose_targets(model, images: np.ndarray) -> tuple[list[dict], list[str]]:
    """One target per stage: its representative tap, the channel with the largest mean response."""
    from toolkit.zoo import stage_taps, tap_key, tap_model

    responses = tap_model(model)(images, training=False)
    targets, stages = [], []
    for stage, tap in stage_taps(model).items():
        mean = np.asarray(responses[tap_key(tap.name)]).mean(axis=(0, 1, 2))
        targets.append({"tap": tap.name, "channel": int(np.argmax(mean))})
        stages.append(stage)
    return targets, stages


def accuracy_rows(args, model, images: np.ndarray, variants: list[str], files: dict) -> tuple[list, list]:
    """Cosine of the board estimate to the projected autodiff gradient, per variant, subspace and stage."""
    from device import ascent, subspace
    from device.plan import ProbePlan
    from device.runtime import Runtime

    targets, stage_names = choose_targets(model, images)
    grads = host_gradients(model, images, targets)
    flat = grads.reshape(*grads.shape[:2], -1)
    rows = []
    for variant in variants:
        runtime = Runtime(files[variant]["probe"], threads=args.threads)
        for text in args.subspaces.split(","):
            log(f"{variant} {text}")
            spec, scheme = parse_subspace(text)
            plan = ProbePlan(targets=targets, images=images, steps=1, subspace=spec,
                             finite_difference={"epsilon_steps": args.epsilon_steps, "scheme": scheme,
                                                "seed": args.seed})
            result = ascent.run_plan(runtime, plan, max_batch=args.max_batch)
            basis = subspace.make_basis(spec, plan.image_shape).astype(np.float64)
            exact = flat @ basis.T  # (n, T, k)
            est = result.gradients[:, :, 0]
            cos = (est * exact).sum(-1) / (np.linalg.norm(est, axis=-1) * np.linalg.norm(exact, axis=-1))
            share = np.linalg.norm(exact, axis=-1) / np.linalg.norm(flat, axis=-1)
            per_ascent = result.meta["finite_difference"]["evaluations_per_ascent"]
            for j, t in enumerate(targets):
                rows.append({"variant": variant, "stage": stage_names[j], "tap": t["tap"],
                             "channel": t["channel"], "subspace": text, "k": int(basis.shape[0]),
                             "scheme": scheme,
                             "invocations_per_step": per_ascent,
                             "interpreter_calls_per_step": -(-per_ascent // args.max_batch),
                             "cosine": float(cos[:, j].mean()), "cosine_min": float(cos[:, j].min()),
                             "captured_share": float(share[:, j].mean())})
    return rows, [{**t, "stage": s} for t, s in zip(targets, stage_names, strict=True)]


def timing_rows(args, images: np.ndarray, variants: list[str], files: dict, target: dict) -> dict:
    """Seconds per ascent step vs the same bare interpreter calls run right before each of its calls."""
    from device import ascent
    from device.plan import ProbePlan
    from device.runtime import Runtime

    spec, scheme = parse_subspace(args.timing_subspace)
    plan = ProbePlan(targets=[target], images=images[:1], steps=args.timing_steps, subspace=spec,
                     finite_difference={"epsilon_steps": args.epsilon_steps, "scheme": scheme})
    timing = {}
    for variant in variants:
        log(f"timing {variant}")
        runtime = PairedFloor(Runtime(files[variant]["probe"], threads=args.threads), images[0])
        ascent.run_plan(runtime, plan, max_batch=args.max_batch)  # warm-up at these batch shapes
        steps, floors, inside = [], [], []
        for _ in range(args.timing_repeats):
            runtime.floor_seconds.clear()
            meta = ascent.run_plan(runtime, plan, max_batch=args.max_batch).meta
            calls = meta["invocations_per_step"]
            # Step 0 also resizes the interpreter back from the previous run's last pass: skip it.
            for step in range(1, len(calls)):
                first = sum(calls[:step])
                floor = sum(runtime.floor_seconds[first:first + calls[step]])
                steps.append(meta["seconds_per_step"][step] - floor)  # the step without its paired floor
                floors.append(floor)
                inside.append((meta["interpreter_seconds_per_step"][step] - floor) / steps[-1])
        ratios = np.array(steps) / np.array(floors)
        timing[variant] = {"subspace": args.timing_subspace,
                           "evaluations_per_step": meta["evaluations_per_step"][0],
                           "interpreter_calls_per_step": calls[0],
                           "step_seconds": float(np.median(steps)), "floor_seconds": float(np.median(floors)),
                           "ratio": float(np.median(ratios)), "ratio_min": float(ratios.min()),
                           "ratio_max": float(ratios.max()), "pairs": len(ratios),
                           "interpreter_share_of_step": float(np.median(inside))}
    return timing


def goals(rows: list[dict], timing: dict) -> dict:
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["stage"] in ("first", "middle") and r["invocations_per_step"] <= GOAL_EVALUATIONS:
            key = (r["variant"], r["stage"])
            best[key] = max(best.get(key, -1.0), r["cosine"])
    worst = max(t["ratio"] for t in timing.values())
    return {"cosine_at_most_64_evaluations": {f"{v}/{s}": {"best": c, "goal": GOALS[v], "met": c >= GOALS[v]}
                                              for (v, s), c in best.items()},
            "time_ratio_to_floor": {"goal": GOAL_TIME_RATIO, "worst": worst, "met": worst <= GOAL_TIME_RATIO}}


def print_table(report: dict) -> None:
    print(f"model: {report['model']}; {report['images']} faces; "
          f"epsilon {report['epsilon_steps']} input steps")
    print(f"{'variant':8} {'stage':7} {'subspace':14} {'k':>4} {'evals':>6} {'calls':>5} {'cosine':>8} "
          f"{'min':>8} {'captured':>9}")
    for r in report["rows"]:
        print(f"{r['variant']:8} {r['stage']:7} {r['subspace']:14} {r['k']:4d} "
              f"{r['invocations_per_step']:6d} {r['interpreter_calls_per_step']:5d} {r['cosine']:8.4f} "
              f"{r['cosine_min']:8.4f} {r['captured_share']:9.4f}")
    for v, t in report["timing"].items():
        print(f"time {v}: {t['step_seconds'] * 1e3:.1f} ms/step vs floor {t['floor_seconds'] * 1e3:.1f} ms "
              f"({t['ratio']:.2f}x; {t['interpreter_share_of_step']:.0%} of a step in the interpreter) for "
              f"{t['evaluations_per_step']} evaluations in {t['interpreter_calls_per_step']} calls")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="trained model.keras (default: an untrained MobileFaceNet)")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="identity folders for start and calibration faces")
    p.add_argument("--images", type=int, default=2, help="start faces (distinct identities)")
    p.add_argument("--variants", default="float32,int8")
    p.add_argument("--subspaces", default="dct:2,dct:3,dct:4:forward,dct:4,dct:8",
                   help="kind:size[:scheme] list; k = size^2 * 3 evaluations 2k+1 (central) or k+1 (forward)")
    p.add_argument("--epsilon-steps", type=float, default=16.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--timing-subspace", default="dct:3", help="subspace of the timing run")
    p.add_argument("--timing-steps", type=int, default=4, help="ascent steps per timing run")
    p.add_argument("--timing-repeats", type=int, default=3, help="timing runs per variant")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-dir", help="export here and keep it (reused when it holds the variants)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one start face, float32 and int8, two small subspaces, one timing run "
                        "(seconds; the figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(images=1, subspaces="dct:2,dct:3", timing_steps=2, timing_repeats=1)
        args = p.parse_args(argv)

    import keras

    from device.runtime import Runtime
    from toolkit.data.normalize import DEFAULT_NORMALIZATION, normalize
    from toolkit.export import export_keras, file_name
    from toolkit.modelfile import load_face_model
    from toolkit.zoo import get_model

    keras.utils.set_random_seed(args.seed)
    if args.model:
        model, meta = load_face_model(args.model)
        model_desc = f"trained: {Path(args.model).name}"
    else:
        model = get_model("mobilefacenet")
        meta = {"normalization": DEFAULT_NORMALIZATION, "architecture": "mobilefacenet"}
        model_desc = f"untrained mobilefacenet (seed {args.seed})"
    faces, calibration = load_faces(Path(args.data), args.images, 200, int(model.input_shape[1]))
    images = normalize(faces)
    variants = [v for v in args.variants.split(",") if v]

    log(f"exporting {', '.join(variants)} (unless --export-dir holds them)")
    t0 = time.perf_counter()
    out_dir = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="fd-ascent-"))
    try:
        files = {v: {"probe": out_dir / file_name(v, "probe")} for v in variants}
        if not all(f["probe"].is_file() for f in files.values()):
            files = export_keras(model, meta, out_dir, variants=variants, calibration=calibration)
        export_s = time.perf_counter() - t0
        rows, targets = accuracy_rows(args, model, images, variants, files)
        middle = next(t for t in targets if t["stage"] == "middle")
        middle = {"tap": middle["tap"], "channel": middle["channel"]}
        timing = timing_rows(args, images, variants, files, middle)
        runtime_info = Runtime(files[variants[0]]["probe"], threads=args.threads).info()
    finally:
        if not args.export_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    report = {
        "model": model_desc,
        "image_size": int(model.input_shape[1]),
        "images": args.images,
        "targets": targets,
        "epsilon_steps": args.epsilon_steps,
        "max_batch": args.max_batch,
        "runtime": runtime_info,
        "export_seconds": export_s,
        "rows": rows,
        "timing": timing,
        "time_ratio_to_floor": max(t["ratio"] for t in timing.values()),
        "goals": goals(rows, timing),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
