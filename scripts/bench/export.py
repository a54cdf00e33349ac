"""Export variants side by side: file size and LiteRT latency of the deploy and tap (probe) models.

    python scripts/bench/export.py --json                 # untrained mobilefacenet, synthetic calibration
    python scripts/bench/export.py --model runs/x/model.keras --json
    python scripts/bench/export.py --from-dir runs/x/export --json   # time files exported before

Every (variant, role, batch, threads) interpreter is timed in the same run, interleaved round by round
so that load from other processes falls on all of them alike; each number is the best (minimum) over
rounds, since other processes only ever add time. ``*_cpu_ms`` is the process CPU time of the same
invocation (all interpreter threads), which waiting for a busy core does not inflate.
Goals: int8 deploy <= 0.3x the float32 size and >= 2x faster at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GOAL_SIZE_RATIO = 0.3
GOAL_SPEEDUP_B1 = 2.0
ROLES = {"deploy": "deploy", "tap": "probe"}


def timings(files: dict, batches: list[int], threads: list[int], rounds: dict[int, int], kernels: str,
            image_shape: tuple[int, ...], seed: int) -> dict[tuple, tuple[float, float]]:
    """Best (wall, process CPU) milliseconds per invocation for every (variant, role, batch, threads)."""
    from device.runtime import Runtime

    rng = np.random.default_rng(seed)
    inputs = {b: rng.uniform(-1, 1, (b, *image_shape)).astype(np.float32) for b in batches}
    runtimes = {(v, role, b, t): Runtime(files[v][ROLES[role]], threads=t, kernels=kernels)
                for v in files for role in ROLES for b in batches for t in threads}
    for key, rt in runtimes.items():
        rt.run(inputs[key[2]])  # warm-up: allocation and delegate preparation
    samples: dict[tuple, list[tuple[float, float]]] = {key: [] for key in runtimes}
    for r in range(max(rounds.values())):
        for key, rt in runtimes.items():
            if r < rounds[key[2]]:
                wall, cpu = time.perf_counter(), time.process_time()
                rt.run(inputs[key[2]])
                samples[key].append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
    return {key: tuple(float(x) for x in np.min(np.array(s), axis=0)) for key, s in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="trained model.keras (default: an untrained mobilefacenet)")
    p.add_argument("--input-size", type=int, default=112, help="input size of the untrained model")
    p.add_argument("--variants", default="float32,float16,dynamic_int8,int8")
    p.add_argument("--kernels", default="xnnpack", choices=("xnnpack", "builtin"))
    p.add_argument("--rounds", type=int, default=30, help="timed invocations at batch 1 (batch 32: a fifth)")
    p.add_argument("--calibration-size", type=int, default=200)
    p.add_argument("--out", help="folder to keep the exported files (default: a temporary one)")
    p.add_argument("--from-dir", help="time the model.<variant>[.probe].tflite files already in this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the untrained model at 48 px, float32 and int8, few timings (seconds; "
                        "the figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(input_size=48, variants="float32,int8", rounds=3, calibration_size=16)
        args = p.parse_args(argv)

    import keras

    from device.manifest import load_manifest, manifest_path_for
    from toolkit.data import synthesize
    from toolkit.export import Calibration, Recipe, export_keras, file_name
    from toolkit.export.recipe import CALIBRATED
    from toolkit.modelfile import load_face_model, save_face_model
    from toolkit.zoo import get_model

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.from_dir:
            files = {v: {r: Path(args.from_dir) / file_name(v, r) for r in ROLES.values()} for v in variants}
            manifest = load_manifest(manifest_path_for(files[variants[0]]["deploy"]))
            name, trained, shape = manifest["model"], None, tuple(manifest["input"]["shape"][1:])
        else:
            if args.model:
                model, meta = load_face_model(args.model)
                source = Path(args.model)
            else:
                keras.utils.set_random_seed(args.seed)
                source = save_face_model(get_model("mobilefacenet", input_size=args.input_size),
                                         Path(tmp) / "model.keras")
                model, meta = load_face_model(source)
            shape = tuple(model.input_shape[1:])
            faces = synthesize(Path(tmp) / "faces", identities=20, images_per_identity=10, size=shape[0],
                               seed=args.seed, progress=False)
            out = Path(args.out) if args.out else Path(tmp) / "export"
            calibration = Calibration(count=args.calibration_size, seed=args.seed)
            recipes = [Recipe(v, calibration=calibration) if v in CALIBRATED else v for v in variants]
            files = export_keras(model, meta, out, recipes, calibration=faces, source=source)
            name, trained = meta.get("architecture", model.name), bool(args.model)
        export_s = time.perf_counter() - t0
        batches, threads = [1, 32], [1, 2]
        rounds = {1: args.rounds, 32: max(3, args.rounds // 5)}
        ms = timings(files, batches, threads, rounds, args.kernels, shape, args.seed)
        result = {"model": name, "trained": trained, "input_size": shape[0], "kernels": args.kernels,
                  "export_seconds": None if args.from_dir else round(export_s, 1),
                  "rounds": {str(b): n for b, n in rounds.items()}, "variants": {}}
        from device.runtime import Runtime

        result["runtime"] = Runtime(files[variants[0]]["deploy"]).info()
        for v in variants:
            entry = {f"{role}_bytes": files[v][ROLES[role]].stat().st_size for role in ROLES}
            for role in ROLES:
                for b in batches:
                    for t in threads:
                        suffix = "" if t == 1 else f"_t{t}"
                        wall, cpu = ms[(v, role, b, t)]
                        entry[f"{role}_b{b}{suffix}_ms"] = round(wall, 3)
                        entry[f"{role}_b{b}{suffix}_cpu_ms"] = round(cpu, 3)
            entry["tap_over_deploy_b1"] = round(entry["tap_b1_ms"] / entry["deploy_b1_ms"], 2)
            result["variants"][v] = entry
    if "float32" in result["variants"]:
        base = result["variants"]["float32"]
        for entry in result["variants"].values():
            entry["size_ratio_to_float32"] = round(entry["deploy_bytes"] / base["deploy_bytes"], 3)
            entry["speedup_b1_vs_float32"] = round(base["deploy_b1_ms"] / entry["deploy_b1_ms"], 2)
            entry["speedup_b32_vs_float32"] = round(base["deploy_b32_ms"] / entry["deploy_b32_ms"], 2)
            entry["cpu_speedup_b1_vs_float32"] = round(
                base["deploy_b1_cpu_ms"] / entry["deploy_b1_cpu_ms"], 2)
        if "int8" in result["variants"]:
            int8 = result["variants"]["int8"]
            result["goals"] = {
                "int8_size_ratio": int8["size_ratio_to_float32"], "size_goal": GOAL_SIZE_RATIO,
                "size_met": int8["size_ratio_to_float32"] <= GOAL_SIZE_RATIO,
                "int8_speedup_b1": int8["speedup_b1_vs_float32"], "speedup_goal": GOAL_SPEEDUP_B1,
                "speedup_met": int8["speedup_b1_vs_float32"] >= GOAL_SPEEDUP_B1,
                "int8_cpu_speedup_b1": int8["cpu_speedup_b1_vs_float32"],
            }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cols = ["deploy_bytes", "tap_bytes", "deploy_b1_ms", "tap_b1_ms", "deploy_b1_t2_ms", "deploy_b32_ms",
            "tap_b32_ms", "deploy_b32_t2_ms"]
    print(f"{result['model']} {shape[0]}px, kernels={args.kernels}, best of {rounds[1]} rounds (batch 1)")
    print(f"{'variant':<14}" + "".join(f"{c:>17}" for c in cols))
    for v, entry in result["variants"].items():
        print(f"{v:<14}" + "".join(f"{entry[c]:>17}" for c in cols))
    if "goals" in result:
        print(json.dumps(result["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
