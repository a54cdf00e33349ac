"""dlib's face ResNet ported to Keras: fidelity to dlib, ORL verification, and its int8 deploy file.

    python scripts/bench/dlib_port.py --data ../shared/data/att_faces --json

Every image is aligned as dlib does (HOG face box, else OpenCV's cascade; 5 landmarks; 150x150 chip); images
without a face are resized whole and listed under ``no_face``. On those same chips:

- ``min_cosine_to_dlib`` / ``mean_cosine_to_dlib``: the port's descriptor against dlib's own
  ``compute_face_descriptor``, over all images (goal: min >= 0.9999);
- ``verification_accuracy`` (the port, float32) and ``dlib_verification_accuracy`` (dlib): 10-fold
  verification on balanced pairs of the people never used for calibration (default s31-s40), same pairs;
- ``int8``: the int8 deploy file (calibrated on aligned faces of the other people) on the host's LiteRT:
  verification on the same pairs, file size, size against the float32 deploy file, and batch-1 speed-up
  over float32 (median of interleaved single-thread runs). Goals: within 0.5 pp of float at >= 2x speed.
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


def batch1_latencies(files: dict[str, Path], shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Median single-thread batch-1 milliseconds per file, runs interleaved so load falls on all alike."""
    from device.runtime import Runtime

    x = np.zeros((1, *shape), np.float32)
    runtimes = {k: Runtime(p, threads=1) for k, p in files.items()}
    for rt in runtimes.values():
        rt.run(x)
    times: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(repeats):
        for k, rt in runtimes.items():
            t0 = time.perf_counter()
            rt.run(x)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"),
                   help="ORL identity folders s1..s40")
    p.add_argument("--eval-identities", default="s31-s40")
    p.add_argument("--calibration-identities", default="s1-s30")
    p.add_argument("--calibration-size", type=int, default=200)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 runs per file")
    p.add_argument("--out", help="folder to keep the exported files in (default: a temporary one)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: two people each side, few pairs and timings (figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(eval_identities="s39-s40", calibration_identities="s1-s2", calibration_size=20,
                       folds=2, repeats=3)
        args = p.parse_args(argv)

    from device.runtime import Runtime
    from toolkit.data import load_identity_folders, make_pairs, normalize, parse_identities
    from toolkit.evaluate import pair_scores, verification_metrics
    from toolkit.export import Calibration, Recipe, export_keras
    from toolkit.zoo.dlib_resnet import dlib_resnet
    from toolkit.zoo.dlib_verify import cosines, dlib_descriptors, port_descriptors

    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    model, origin = dlib_resnet()
    size = int(model.input_shape[1])
    # Fidelity is measured on every person of the folder; a quick run reads only the two sides.
    people = f"{args.eval_identities},{args.calibration_identities}" if args.quick else None
    fs = load_identity_folders(args.data, image_size=size, align=True, progress=not args.json,
                               identities=people)
    log(f"{len(fs)} images, {len(fs.crop_fallbacks)} without a face found (resized whole)")

    port = port_descriptors(model, fs.images)
    ref = dlib_descriptors(fs.images)
    cos = cosines(port, ref)

    eval_fs = fs.select(parse_identities(args.eval_identities))
    calib_fs = fs.select(parse_identities(args.calibration_identities))
    if set(eval_fs.names) & set(calib_fs.names):
        raise SystemExit("evaluation and calibration identities overlap")
    pairs = make_pairs(eval_fs.labels, n_folds=args.folds, seed=args.seed)
    index = {path: i for i, path in enumerate(fs.paths)}
    rows = np.array([index[path] for path in eval_fs.paths])

    def verification(embeddings: np.ndarray) -> dict:
        e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        return verification_metrics(pair_scores(e, pairs.left, pairs.right), pairs.issame, pairs.fold)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        meta = {"normalization": {"mean": 127.5, "scale": 128.0, "channel_order": "RGB"}, "origin": origin}
        int8 = Recipe("int8", calibration=Calibration(count=args.calibration_size, seed=args.seed))
        files = export_keras(model, meta, out, ["float32", int8], calibration=calib_fs.images,
                             progress=not args.json)
        deploy = {v: files[v]["deploy"] for v in files}
        x = normalize(eval_fs.images)
        runtime = Runtime(deploy["int8"])
        int8 = verification(np.concatenate([runtime.run(x[s:s + 16])["embedding"]
                                            for s in range(0, len(x), 16)]).astype(np.float64))
        sizes = {v: deploy[v].stat().st_size for v in deploy}
        ms = batch1_latencies(deploy, (size, size, 3), args.repeats)

    port_v, dlib_v = verification(port[rows]), verification(ref[rows])
    report = {
        "images": int(len(fs)),
        "min_cosine_to_dlib": float(cos.min()),
        "mean_cosine_to_dlib": float(cos.mean()),
        "verification_accuracy": port_v["verification_accuracy"],
        "dlib_verification_accuracy": dlib_v["verification_accuracy"],
        "params": int(model.count_params()),
        "int8": {
            "verification_accuracy": int8["verification_accuracy"],
            "size_bytes": int(sizes["int8"]),
            "size_ratio": sizes["int8"] / sizes["float32"],
            "speedup_b1": ms["float32"] / ms["int8"],
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    log(f"no face found: {', '.join(fs.crop_fallbacks) or 'none'}")
    print(f"images                      {report['images']}")
    print(f"cosine to dlib (min / mean) {report['min_cosine_to_dlib']:.7f} / "
          f"{report['mean_cosine_to_dlib']:.7f}")
    print(f"verification, port float32  {report['verification_accuracy']:.2%} ± {port_v['accuracy_std']:.2%} "
          f"over folds ({len(pairs)} pairs, {eval_fs.names[0]}..{eval_fs.names[-1]})")
    print(f"verification, dlib          {report['dlib_verification_accuracy']:.2%} ± "
          f"{dlib_v['accuracy_std']:.2%}")
    print(f"parameters                  {report['params']:,} (dlib's file: {origin['dlib_params']:,}, "
          "batch norms folded into the convs)")
    q = report["int8"]
    print(f"int8 deploy                 {q['verification_accuracy']:.2%} ± {int8['accuracy_std']:.2%}, "
          f"{q['size_bytes']:,} bytes "
          f"(x{q['size_ratio']:.2f} of float32), batch-1 speed-up x{q['speedup_b1']:.2f} "
          f"({ms['float32']:.1f} ms -> {ms['int8']:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
