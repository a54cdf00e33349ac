"""Benchmark: the default probe (5 channels x first/middle/last stage taps, 20 steps, mobilefacenet 112x112)
against tf-keras-vis ActivationMaximization (same model, taps, channels, steps; its regularisers and input
modifiers off; plain SGD at alpha = 1) and against the floor: 20 bare forward+backward passes of the same
batch through the deepest tap. Every timing includes building and tracing, i.e. what a user waits for.
All three run side by side in one process; each is repeated and the median reported.
``faceprobe_warm_s`` is a second run of the already compiled plan (what a training callback pays).

    python scripts/bench/probe_speed.py [--json] [--repeats 3] [--images 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from device.plan import ProbePlan  # noqa: E402
from toolkit.data.normalize import normalize  # noqa: E402
from toolkit.probe.ascent import Ascender, truncated_model  # noqa: E402
from toolkit.probe.plans import make_plan  # noqa: E402
from toolkit.zoo import get_model  # noqa: E402

STEPS = 20
FACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "att_faces"


def start_images(n: int, size: int) -> np.ndarray:
    """ORL faces when present (grey PGM to RGB), else seeded noise: timing does not depend on content."""
    import cv2

    files = sorted(FACES.glob("s1/*.pgm"))[:n]
    if len(files) == n:
        faces = [cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (size, size)) for f in files]
        return normalize(np.stack([np.repeat(f[..., None], 3, -1) for f in faces]))
    return normalize(np.random.default_rng(0).integers(0, 256, (n, size, size, 3)))


def time_faceprobe(model: keras.Model, plan: ProbePlan) -> tuple[float, float]:
    """(time a user waits, building and tracing included; time of a second run of the compiled plan)."""
    start = time.perf_counter()
    ascender = Ascender(model, plan)
    ascender.run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    ascender.run()
    return first, time.perf_counter() - start


def time_tf_keras_vis(model: keras.Model, plan: ProbePlan) -> float:
    """One ActivationMaximization call per tap (its design), all that tap's (image, channel) pairs batched."""
    from tf_keras_vis.activation_maximization import ActivationMaximization

    start = time.perf_counter()
    for tap in plan.taps:
        channels = [t["channel"] for t in plan.targets if t["tap"] == tap]
        seed = np.concatenate([plan.images] * len(channels))
        per_sample = tf.constant(np.repeat(channels, len(plan.images)), tf.int32)

        def score(output, per_sample=per_sample):
            maps = tf.reduce_mean(output, axis=(1, 2))
            return tf.gather(maps, per_sample, axis=1, batch_dims=1)

        visualize = ActivationMaximization(truncated_model(model, tap), clone=False)
        visualize(score, seed_input=seed, input_range=(None, None), input_modifiers=[], regularizers=[],
                  steps=STEPS, optimizer=keras.optimizers.SGD(learning_rate=1.0))
    return time.perf_counter() - start


def time_floor(model: keras.Model, plan: ProbePlan) -> float:
    """20 bare forward+backward passes of the whole batch through the deepest tap."""
    start = time.perf_counter()
    sub = truncated_model(model, plan.taps[-1])
    batch = tf.constant(np.concatenate([plan.images] * len(plan.targets)))

    @tf.function
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(tf.reduce_mean(sub(x, training=False), axis=(1, 2, 3)))
        return tape.gradient(total, x)

    for _ in range(STEPS):
        g = grad(batch)
    g.numpy()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method; the median is reported")
    parser.add_argument("--images", type=int, default=1, help="start images (targets = 15 x images)")
    parser.add_argument("--size", type=int, default=112, help="input size (default 112)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one run of each method at 48 px (seconds; the figures mean nothing)")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(repeats=1, size=48)
        args = parser.parse_args(argv)

    model = get_model("mobilefacenet", input_size=args.size)
    images = start_images(args.images, args.size)
    plan = make_plan(model, images, per_tap=5, steps=STEPS)
    runs: dict[str, list[float]] = {"faceprobe": [], "tf_keras_vis": [], "floor": [], "faceprobe_warm": []}
    for _ in range(args.repeats):  # interleaved so load changes on the machine hit all three alike
        first, warm = time_faceprobe(model, plan)
        runs["faceprobe"].append(first)
        runs["faceprobe_warm"].append(warm)
        runs["tf_keras_vis"].append(time_tf_keras_vis(model, plan))
        runs["floor"].append(time_floor(model, plan))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {
        "faceprobe_s": med["faceprobe"],
        "tf_keras_vis_s": med["tf_keras_vis"],
        "floor_s": med["floor"],
        "speedup_vs_tf_keras_vis": med["tf_keras_vis"] / med["faceprobe"],
        "ratio_to_floor": med["faceprobe"] / med["floor"],
        "faceprobe_warm_s": med["faceprobe_warm"],
        "runs_s": runs,
        "targets": len(plan.targets),
        "images": len(plan.images),
        "taps": plan.taps,
        "steps": STEPS,
        "model": "mobilefacenet",
        "input_size": args.size,
        "tensorflow": tf.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k in ("faceprobe_s", "tf_keras_vis_s", "floor_s", "speedup_vs_tf_keras_vis", "ratio_to_floor"):
            print(f"{k:>24}: {out[k]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
