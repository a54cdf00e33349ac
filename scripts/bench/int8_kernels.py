"""What this machine's LiteRT kernels make of int8, op kind by op kind: batch-1 time of a stack of one op
(1x1 conv, 3x3 depthwise conv, residual add, 3x3 conv) at MobileFaceNet's feature-map sizes, in float32
and int8, on XNNPACK and on the builtin kernels, timed side by side.

    python scripts/bench/int8_kernels.py --json

Prints ``ops`` (a list of {op, shape, float32_us, int8_us, int8_speedup, builtin_int8_us}) and
``depthwise_int8_speedup`` / ``conv1x1_int8_speedup`` (geometric means over the shapes): why keeping
depthwise convs in float (recipe ``float_ops``) can make an int8 MobileFaceNet faster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHAPES = ((28, 128), (14, 256), (7, 256))  # (side, channels) of MobileFaceNet's stages at 112 px
DEPTH = 10  # ops per stack: per-invoke overhead spread over many ops


def layer(kind: str, channels: int):
    import keras

    if kind == "conv1x1":
        return lambda x: keras.layers.ReLU()(keras.layers.Conv2D(channels, 1)(x))
    if kind == "depthwise3x3":
        return lambda x: keras.layers.ReLU()(keras.layers.DepthwiseConv2D(3, padding="same")(x))
    if kind == "conv3x3":
        return lambda x: keras.layers.ReLU()(keras.layers.Conv2D(channels, 3, padding="same")(x))
    return lambda x: keras.layers.Add()([x, keras.layers.Conv2D(channels, 1)(x)])  # add (after a 1x1)


def convert(kind: str, side: int, channels: int) -> tuple[bytes, bytes]:
    """(float32, int8) .tflite of DEPTH stacked ops of ``kind``."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((side, side, channels))
    x = inputs
    for _ in range(DEPTH):
        x = layer(kind, channels)(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    files = []
    for quantize in (False, True):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [rng.uniform(-1, 1, (1, side, side, channels)).astype(np.float32)] for _ in range(8))
        with contextlib.redirect_stdout(sys.stderr):  # the converter prints its SavedModel's signature
            files.append(converter.convert())
    return files[0], files[1]


def time_side_by_side(models: list[tuple[bytes, bool]], shape: tuple[int, ...], repeats: int) -> list[float]:
    """Best-of-``repeats`` µs per invoke of each (model, xnnpack), timed in turn round by round."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    runners = []
    for content, xnnpack in models:
        kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        it = Interpreter(model_content=content, num_threads=1, experimental_op_resolver_type=kind)
        it.allocate_tensors()
        runners.append(it)
    x = np.random.default_rng(1).uniform(-1, 1, (1, *shape)).astype(np.float32)
    best = [float("inf")] * len(runners)
    for _ in range(repeats):
        for i, it in enumerate(runners):
            t0 = time.perf_counter()
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [b * 1e6 for b in best]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200, help="timed invokes per model (best kept)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the last stage's shape only, a few timed invokes per model (seconds; the "
                        "figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(repeats=5)
        args = p.parse_args(argv)

    rows = []
    for kind in ("conv1x1", "depthwise3x3", "add", "conv3x3"):
        for side, channels in SHAPES[-1:] if args.quick else SHAPES:
            f32, i8 = convert(kind, side, channels)
            t_f32, t_i8, t_builtin = time_side_by_side([(f32, True), (i8, True), (i8, False)],
                                                       (side, side, channels), args.repeats)
            rows.append({"op": kind, "shape": [side, side, channels], "float32_us": t_f32 / DEPTH,
                         "int8_us": t_i8 / DEPTH, "int8_speedup": t_f32 / t_i8,
                         "builtin_int8_us": t_builtin / DEPTH})

    def gmean(kind: str) -> float:
        return float(np.exp(np.mean([np.log(r["int8_speedup"]) for r in rows if r["op"] == kind])))

    result = {"ops": rows, "depthwise_int8_speedup": gmean("depthwise3x3"),
              "conv1x1_int8_speedup": gmean("conv1x1"), "add_int8_speedup": gmean("add"),
              "conv3x3_int8_speedup": gmean("conv3x3"), "threads": 1, "batch": 1}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'op':<14}{'shape':>14}{'float32 us':>12}{'int8 us':>10}{'int8 x':>8}{'builtin int8 us':>17}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['op']:<14}{shape:>14}{r['float32_us']:>12.1f}{r['int8_us']:>10.1f}{r['int8_speedup']:>8.2f}"
              f"{r['builtin_int8_us']:>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
