"""The disagreement ascent against chance: from real faces, the worst float-vs-quantized embedding cosine
finite-difference ascent finds within an L-infinity budget, beside the best of random perturbations of the
same budget, per model and variant; and float32 against itself (exactly 0).

    python scripts/bench/disagreement.py --json                       # the ORL model (trained here)
    python scripts/bench/disagreement.py --model runs/orl/model.keras --dlib --json   # + dlib's port (slow)

Per (model, variant): ``ascent_worst_cosine`` (the lowest cosine over the start faces),
``random_worst_cosine`` (the lowest of ``--random`` tries per face: half random directions of the ascent's
subspace, half random pixel signs, each at the full budget), ``ratio`` = (1 - ascent) / (1 - random), the
start cosine, and the seconds it took. Variants: float32 (against itself), float16, dynamic int8, int8,
int16x8, and int8 calibrated on dark faces (ranges that clip bright ones). ``goal_met``: ratio >= 5 on
every int8 file.
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
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from check_matrix import train_orl  # noqa: E402

VARIANTS = ("float16", "dynamic_int8", "int8", "int16x8")


def measure(name: str, variant: str, deploy: Path, reference: Path, images: np.ndarray, plan) -> dict:
    """One file's disagreement ascent and its random control on the host interpreter."""
    from device import tasks
    from device.runtime import Runtime

    started = time.perf_counter()
    result = tasks.run(Runtime(deploy), plan, "ascent", reference=Runtime(reference))
    found = result.objective[:, 0]
    control = result.meta["control"]
    chance = np.asarray(control["worst"])
    ascent, random = 1 - float(found.max()), 1 - float(chance.max())
    return {"model": name, "variant": variant, "ascent_worst_cosine": ascent, "random_worst_cosine": random,
            "ratio": (1 - ascent) / (1 - random) if random < 1 else None,
            "start_worst_cosine": 1 - float(found[:, 0].max()),
            "per_face": {"ascent": (1 - found.max(axis=1)).tolist(), "random": (1 - chance).tolist(),
                         "random_subspace": (1 - np.asarray(control["worst_subspace"])).tolist(),
                         "random_sign": (1 - np.asarray(control["worst_sign"])).tolist()},
            "seconds": time.perf_counter() - started}


def model_rows(name: str, model, meta: dict, faces: np.ndarray, calib: np.ndarray, out: Path,
               args: argparse.Namespace) -> list[dict]:
    """Every variant of one model against its float32 file, and float32 against itself."""
    from toolkit.check.disagreement import disagreement_plan
    from toolkit.data import normalize
    from toolkit.data.shift import corrupt
    from toolkit.export import Recipe, export_keras

    files = export_keras(model, meta, out / name, ["float32", *VARIANTS], calibration=calib)
    dark = export_keras(model, meta, out / f"{name}-dark", [Recipe("int8")],
                        calibration=corrupt(calib, "low_light", 3))["int8"]
    images = normalize(faces, meta["normalization"])
    plan = disagreement_plan(images, meta["normalization"], args.budget, args.steps, control=args.random)
    reference = files["float32"]["deploy"]
    rows = [measure(name, "float32 (itself)", reference, reference, images, plan)]
    rows += [measure(name, v, files[v]["deploy"], reference, images, plan) for v in VARIANTS]
    rows.append(measure(name, "int8 calibrated on dark faces", dark["deploy"], reference, images, plan))
    for r in rows:
        print(f"disagreement: {name} {r['variant']}: ascent {r['ascent_worst_cosine']:.5f}, random "
              f"{r['random_worst_cosine']:.5f}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"))
    p.add_argument("--model", help="the ORL model.keras (default: train the ORL recipe at width 0.5)")
    p.add_argument("--dlib", action="store_true", help="also dlib's port (aligned 150x150 faces; slow)")
    p.add_argument("--faces", type=int, default=4, help="start faces, one per person of s31.. (default 4)")
    p.add_argument("--budget", type=float, default=8.0, help="L-infinity budget in grey levels (default 8)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--random", type=int, default=100, help="random tries per face (default 100)")
    p.add_argument("--out", help="folder to keep the files (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny model, 2 faces, 3 steps")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(faces=2, steps=3)
        args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        raise SystemExit(f"disagreement: no face folders at {args.data}; pass --data DIR")

    from toolkit.data import load_identity_folders
    from toolkit.modelfile import load_face_model

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        model_path = (Path(args.model) if args.model else
                      train_orl(args.data, out / "train", 1 if args.quick else None,
                                ["input_size=32"] if args.quick else ["width=0.5"], args.quick))
        model, meta = load_face_model(model_path)
        size = int(model.input_shape[1])

        def faces(identities: str, align: bool = False, size: int = size) -> np.ndarray:
            return load_identity_folders(args.data, image_size=size, progress=False, identities=identities,
                                         align=align)

        check = faces("s31-s40")
        starts = check.images[[int(np.flatnonzero(check.labels == c)[0]) for c in range(args.faces)]]
        calib = faces("s1-s2" if args.quick else "s1-s30").images
        rows = model_rows("orl", model, meta, starts, calib, out, args)
        if args.dlib:
            from toolkit.zoo.dlib_resnet import dlib_resnet

            dlib, origin = dlib_resnet()
            dsize = int(dlib.input_shape[1])
            aligned = faces("s31-s40", True, dsize)
            dstarts = aligned.images[[int(np.flatnonzero(aligned.labels == c)[0]) for c in range(args.faces)]]
            norm = {"mean": 127.5, "scale": 128.0, "channel_order": "RGB"}
            dmeta = {"normalization": norm, "origin": origin}
            rows += model_rows("dlib", dlib, dmeta, dstarts, faces("s1-s10", True, dsize).images, out, args)
    int8 = [r for r in rows if "int8" in r["variant"] and "dynamic" not in r["variant"]]
    selves = [r for r in rows if r["variant"] == "float32 (itself)"]
    result = {"budget_grey_levels": args.budget, "steps": args.steps, "random_tries": args.random,
              "faces": args.faces, "results": rows,
              "float32_self_disagreement": max(1 - r["ascent_worst_cosine"] for r in selves),
              "float32_self_zero": all(r["ascent_worst_cosine"] == 1.0 and r["random_worst_cosine"] == 1.0
                                       for r in selves),
              "goal_met": all(r["ratio"] is not None and r["ratio"] >= 5 for r in int8)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'model':<6}{'variant':<32}{'start':>9}{'ascent':>9}{'random':>9}{'ratio':>7}")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['model']:<6}{r['variant']:<32}{r['start_worst_cosine']:>9.5f}{r['ascent_worst_cosine']:>9.5f}"
              f"{r['random_worst_cosine']:>9.5f}{ratio:>7}")
    print(f"float32 against itself exactly 0: {result['float32_self_zero']}; ratio >= 5 on every int8 file: "
          f"{result['goal_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
