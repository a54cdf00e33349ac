"""Float/quantized TFLite pairs made without faceprobe's exporter, checked end to end as foreign pairs
(`faceprobe check --float F --quantized Q`), beside faceprobe's own Keras-path check where there is one.

    python scripts/bench/foreign_pair.py --json                  # trains the ORL model (40 epochs)
    python scripts/bench/foreign_pair.py --model runs/orl/model.keras --json
    python scripts/bench/foreign_pair.py --quick --json          # smoke run: small models, the gate open

Pairs: (a) a face CNN written as a plain tf.Module (no Keras), trained in plain TensorFlow on s1-s30, and
converted by the TFLite converter to float32 and int8; (b) the ORL model's float32 deploy file quantized
to int8 by ai-edge-quantizer from the float file alone, with faceprobe's own int8 file of the same model
checked both ways (Keras path, and as a foreign pair) beside it; (c) dlib's port's float32 file quantized
by ai-edge-quantizer (``--no-dlib`` skips it). Known-bad: (b)'s ai-edge-quantizer file with one middle tap's
range clipped to a twentieth (expected to fail); beside it (b)'s float file by ai-edge-quantizer with
per-tensor weights (no expectation: bad only where channel ranges differ much); a float16 pair of (a).
Each: ``taps_found``, ``taps_matched``, the verdict and the worst tap.

``sqnr_gap_db``: on faceprobe's own int8 deploy file of (b), the worst-tap SQNR over the taps both paths
see (the foreign tap whose float values equal a Keras tap's, or its ReLU where the converter fused the
activation), foreign path minus Keras path, on the same faces. It is not expected near 0: the deploy file's
activations are fused into its convs, so the foreign path judges post-ReLU tensors quantized over the
positive range only, while the Keras path judges the probe file's pre-activation tensors, quantized over
both signs (about twice the step) — two different int8 tensors. ``sqnr_gap_db_same_tensors`` is the
like-for-like control that tests the machinery: faceprobe's own float32 and int8 *probe* files (the Keras
path's, with pre-activation taps; their tap outputs dropped, since the foreign path takes one embedding
output, the ops unchanged) checked as a foreign pair, so the foreign tap finder reads the very int8 tensors
the Keras path judges; the same worst-tap difference over the taps both see (``common_taps_same_tensors``,
per tap). Goal: every pair checked end to end and |sqnr_gap_db_same_tensors| <= 0.5.
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

GOAL_DB = 0.5
SAME = 0.9999  # cosine at which a foreign tap is the Keras tap (the same tensor, BN folded)


def pair_row(report: dict, expected: str | None = None) -> dict:
    """One checked pair's figures from its report."""
    summary = report["summary"]
    foreign = report.get("foreign") or {}
    host = report["boards"][0] if report.get("boards") else None
    taps = host["taps"] if host else []
    worst = min(taps, key=lambda r: r["sqnr_db"]) if taps else None
    return {"taps_found": foreign.get("taps_found"), "taps_matched": foreign.get("taps_matched"),
            "matched_by": sorted({m["matched_by"] for m in foreign.get("matches", [])}),
            "verdict": report["verdict"], "expected": expected,
            "worst_tap": summary.get("worst_tap"), "first_broken_tap": summary.get("first_broken_tap"),
            "worst_tap_sqnr_db": worst["sqnr_db"] if worst else None,
            "failed_checks": summary.get("failed_checks"),
            "verification_accuracy": summary.get("verification_accuracy"),
            "accuracy_drop_pp": summary.get("accuracy_drop_pp")}


def faces(data: str, identities: str, size: int, norm: dict | None = None, align: bool = False):
    from toolkit.data import load_identity_folders, normalize

    f = load_identity_folders(data, image_size=size, progress=False, identities=identities, align=align)
    return f, normalize(f.images, norm)


def module_pairs(args, out: Path, opts) -> dict:
    """(a): the plain tf.Module, trained without Keras, to float32 / int8 / float16 by the converter."""
    from toolkit.check.foreign import run_foreign_check
    from toolkit.foreign.samples import PlainFaceNet, convert_module, train_module

    train, x = faces(args.data, args.calibration_identities, 64)
    net = PlainFaceNet(seed=0)
    start = time.time()
    loss = train_module(net, x, train.labels, epochs=args.module_epochs)
    trained_s = time.time() - start
    f32 = convert_module(net, out / "module.float32.tflite")
    i8 = convert_module(net, out / "module.int8.tflite", "int8", x[::3])
    f16 = convert_module(net, out / "module.float16.tflite", "float16")
    rows = {}
    for name, q, expected in (("int8", i8, "pass"), ("float16", f16, "pass")):
        rows[name] = pair_row(run_foreign_check(f32, q, out / f"check_module_{name}", options=opts,
                                                progress=False), expected)
    rows["int8"].update(train_epochs=args.module_epochs, train_seconds=round(trained_s, 1),
                        train_loss=loss)
    return rows


def orl_model(args, out: Path) -> Path:
    if args.model:
        return Path(args.model)
    from check_matrix import train_orl

    return train_orl(args.data, out / "orl", args.epochs, args.set or [], quick=args.quick)


def common_taps(model, keras_probe: Path, foreign_float_probe: Path, foreign_quant_probe: Path,
                images: np.ndarray) -> list[dict]:
    """The taps both paths see, with each path's SQNR on ``images``: a foreign tap is a Keras tap when its
    float values equal the Keras tap's (or the Keras tap's ReLU, where the converter fused it), cosine
    >= SAME. The Keras path's SQNR of a fused tap is taken after the same ReLU, on its own probe file."""
    from device.runtime import Runtime
    from toolkit.check.metrics import ErrorSums
    from toolkit.probe.compare import cosine
    from toolkit.probe.reference import KerasReference

    ref = KerasReference(model)
    kf = ref.tap_values(images)
    kq_rt, ff_rt, fq_rt = Runtime(keras_probe), Runtime(foreign_float_probe), Runtime(foreign_quant_probe)
    kq = {t: np.concatenate([kq_rt.run(images[i:i + 8])[kq_rt.taps[t]["key"]]
                             for i in range(0, len(images), 8)]) for t in kq_rt.taps}
    rows = []
    for name, entry in ff_rt.taps.items():
        ff = np.concatenate([ff_rt.run(images[i:i + 8])[entry["key"]] for i in range(0, len(images), 8)])
        fq = np.concatenate([fq_rt.run(images[i:i + 8])[fq_rt.taps[name]["key"]]
                             for i in range(0, len(images), 8)])
        post = bool(entry.get("post_activation"))
        for tap, values in kf.items():
            if values.shape != ff.shape:
                continue
            seen = np.maximum(values, 0) if post else values
            if cosine(seen, ff) < SAME:
                continue
            keras_q = np.maximum(kq[tap], 0) if post else kq[tap]
            ks, fs = ErrorSums(), ErrorSums()
            ks.add(seen, keras_q)
            fs.add(ff, fq)
            k_db, f_db = ks.result(None)["sqnr_db"], fs.result(None)["sqnr_db"]
            rows.append({"foreign_tap": name, "keras_tap": tap, "post_activation": post,
                         "keras_sqnr_db": k_db, "foreign_sqnr_db": f_db, "gap_db": f_db - k_db})
            break
    return rows


def worst_gap(rows: list[dict]) -> float | None:
    """Worst-tap SQNR, foreign path minus Keras path, over ``rows`` (common_taps)."""
    return (min(r["foreign_sqnr_db"] for r in rows) - min(r["keras_sqnr_db"] for r in rows)) if rows else None


def embedding_only(probe: Path, out: Path) -> Path:
    """faceprobe's probe file with its tap outputs dropped from the graph and the signature, nothing else
    changed (the foreign path takes one embedding output): its taps stay unfused, pre-activation tensors."""
    from tensorflow.lite.tools import flatbuffer_utils

    from device.manifest import load_manifest, manifest_path_for
    from toolkit.foreign.graph import read_object

    outputs = load_manifest(manifest_path_for(probe))["outputs"]
    key = next(o["key"] for o in outputs if o["kind"] == "embedding")
    model = read_object(probe.read_bytes())
    (signature,) = model.signatureDefs
    signature.outputs = [o for o in signature.outputs if o.name.decode() == key]
    model.subgraphs[0].outputs = np.array([o.tensorIndex for o in signature.outputs], np.int32)
    out.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return out


def orl_pairs(args, out: Path, opts) -> tuple[dict, dict]:
    """(b) and the known-bad pairs made from its float file."""
    from device.manifest import load_manifest, manifest_path_for
    from toolkit.check.damage import clip_tensor_range
    from toolkit.check.foreign import run_foreign_check
    from toolkit.check.runner import run_check
    from toolkit.export import Calibration, Recipe, export_model
    from toolkit.foreign.samples import edge_quantize
    from toolkit.modelfile import load_face_model

    model_path = orl_model(args, out)
    model, meta = load_face_model(model_path)
    size = int(model.input_shape[1])
    norm = meta["normalization"]
    cal_faces, cal = faces(args.data, args.calibration_identities, size, norm)
    recipe = Recipe("int8", calibration=Calibration(images=args.data, identities=args.calibration_identities))
    exported = export_model(model_path, out / "orl_export", ["float32", recipe], progress=False)
    f32, own = exported["float32"]["deploy"], exported["int8"]["deploy"]
    keras_report = run_check(model_path, out / "check_keras", quantized=own, options=opts, progress=False)
    own_report = run_foreign_check(f32, own, out / "check_own_foreign", norm, options=opts, progress=False)
    probes = [embedding_only(Path(exported[v]["probe"]), out / f"orl.probe_{v}.tflite")
              for v in ("float32", "int8")]
    probe_report = run_foreign_check(*probes, out / "check_own_probe_foreign", norm, options=opts,
                                     progress=False)
    sample = cal[::max(1, len(cal) // args.calibration_images)][:args.calibration_images]
    aeq = edge_quantize(f32, out / "orl.aeq_int8.tflite", sample)
    aeq_report = run_foreign_check(f32, aeq, out / "check_aeq", norm, options=opts, progress=False)

    check_faces, check_images = faces(args.data, args.check_identities, size, norm)
    rng = np.random.default_rng(opts.seed)
    idx = np.sort(rng.choice(len(check_faces.labels), min(opts.sample, len(check_faces.labels)),
                             replace=False))
    both, same = (common_taps(model, exported["int8"]["probe"], Path(r["exported"]["float32"]["probe"]),
                              Path(r["exported"]["int8"]["probe"]), check_images[idx])
                  for r in (own_report, probe_report))

    per_tensor = edge_quantize(f32, out / "orl.aeq_int8_per_tensor.tflite", sample, per_tensor=True)
    middle = aeq_report["foreign"]["matches"][len(aeq_report["foreign"]["matches"]) // 2]["quantized_tensor"]
    clipped = out / "orl.aeq_int8_clipped.tflite"
    clipped.write_bytes(clip_tensor_range(aeq.read_bytes(), [middle], 0.05))
    # Per-tensor weights are bad only where a layer's channels differ much in range: on the width-1.0 ORL
    # model they are not known to be (docs/quantization.md: no tap moves by more than 0.3 dB there), so
    # only the clipped range is expected to fail.
    bad = {}
    for name, q, expected in (("per_tensor_weights", per_tensor, None), ("clipped_range", clipped, "fail")):
        bad[name] = pair_row(run_foreign_check(f32, q, out / f"check_{name}", norm, options=opts,
                                               progress=False), expected)
    bad["clipped_range"]["clipped_tensor"] = middle
    keras_row = pair_row(keras_report)
    keras_row["taps"] = len(load_manifest(manifest_path_for(exported["int8"]["probe"]))["outputs"]) - 1
    row = {**pair_row(aeq_report),
           "keras_path_own_int8": keras_row, "foreign_path_own_int8": pair_row(own_report),
           "foreign_path_own_probe_files": pair_row(probe_report),
           "common_taps": both, "sqnr_gap_db": worst_gap(both),
           "common_taps_same_tensors": same, "sqnr_gap_db_same_tensors": worst_gap(same),
           "model": str(model_path),
           "calibration_images": int(len(sample))}
    return row, bad


def dlib_pair(args, out: Path, opts) -> dict:
    """(c): dlib's port's float32 file quantized by ai-edge-quantizer, on aligned chips."""
    from toolkit.check.foreign import run_foreign_check
    from toolkit.export import export_model
    from toolkit.foreign.samples import edge_quantize
    from toolkit.modelfile import save_face_model
    from toolkit.zoo.dlib_resnet import dlib_resnet

    model, origin = dlib_resnet()
    path = save_face_model(model, out / "dlib" / "model.keras", origin=origin)
    f32 = export_model(path, out / "dlib_export", ["float32"], progress=False)["float32"]["deploy"]
    from toolkit.modelfile import load_face_model

    _, meta = load_face_model(path)
    _, cal = faces(args.data, args.calibration_identities, int(model.input_shape[1]), meta["normalization"],
                   align=True)
    sample = cal[::max(1, len(cal) // args.calibration_images)][:args.calibration_images]
    aeq = edge_quantize(f32, out / "dlib.aeq_int8.tflite", sample)
    from dataclasses import replace

    report = run_foreign_check(f32, aeq, out / "check_dlib", meta["normalization"],
                               options=replace(opts, align=True), progress=False)
    return {**pair_row(report), "calibration_images": int(len(sample))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"),
                   help="ORL identity folders s1..s40")
    p.add_argument("--model", help="the ORL model.keras (default: train models/mobilefacenet-orl.toml)")
    p.add_argument("--epochs", type=int, help="epochs of that training (default: the recipe's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="recipe override for that training")
    p.add_argument("--module-epochs", type=int, default=15, help="epochs of the tf.Module's training")
    p.add_argument("--check-identities", default="s31-s40")
    p.add_argument("--calibration-identities", default="s1-s30")
    p.add_argument("--calibration-images", type=int, default=100,
                   help="faces ai-edge-quantizer calibrates on (default 100)")
    p.add_argument("--sample", type=int, default=32, help="faces of the tap level (default 32)")
    p.add_argument("--steps", type=int, default=10, help="feature-level ascent steps (default 10)")
    p.add_argument("--no-dlib", action="store_true", help="skip (c), dlib's port (the slowest pair)")
    p.add_argument("--out", help="folder to keep everything (default: a temporary one)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny models, two people, the data gate open (the figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(check_identities="s37-s40", calibration_identities="s1-s4", sample=4, steps=2,
                       epochs=1, module_epochs=1, calibration_images=8, no_dlib=True)
        args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        raise SystemExit(f"foreign_pair: no face folders at {args.data}; pass --data DIR")
    from toolkit.check import CheckOptions

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        thresholds = None
        if args.quick:
            from check_matrix import OPEN_GATE

            thresholds = out / "open-gate.toml"
            thresholds.write_text(OPEN_GATE)
        opts = CheckOptions(data=args.data, identities=args.check_identities, thresholds=thresholds,
                            sample=args.sample, steps=args.steps, search="never")
        module = module_pairs(args, out, opts)
        orl, bad = orl_pairs(args, out, opts)
        dlib = None if args.no_dlib else dlib_pair(args, out, opts)
    pairs = {"a_module_int8": module["int8"], "b_orl_ai_edge_quantizer": orl,
             "c_dlib_ai_edge_quantizer": dlib or {"skipped": "--no-dlib" if not args.quick else "--quick"}}
    checked = [r for r in pairs.values() if "skipped" not in r]
    gap, same = orl["sqnr_gap_db"], orl["sqnr_gap_db_same_tensors"]
    result = {
        "pairs": pairs,
        "float16": module["float16"],
        "known_bad": bad,
        "sqnr_gap_db": gap,
        "sqnr_gap_db_same_tensors": same,
        "checked_end_to_end": all(r["verdict"] in ("pass", "fail") for r in checked),
        "known_bad_caught": all(r["verdict"] == "fail" for r in bad.values() if r["expected"] == "fail"),
        "float16_passed": module["float16"]["verdict"] == "pass",
        "goal": f"every pair checked end to end; |sqnr_gap_db_same_tensors| <= {GOAL_DB}",
        "goal_met": bool(all(r["verdict"] in ("pass", "fail") for r in checked) and same is not None
                         and abs(same) <= GOAL_DB and not args.no_dlib),
        "settings": {"check_identities": args.check_identities,
                     "calibration_identities": args.calibration_identities, "sample": args.sample,
                     "steps": args.steps, "epochs": args.epochs, "module_epochs": args.module_epochs,
                     "quick": args.quick},
        "seconds": round(time.time() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return 0
    print(f"{'pair':<34}{'found f/q':>10}{'matched':>8}  {'verdict':<8}{'worst tap':<32}{'SQNR dB':>8}")
    rows = {**pairs, "float16 (a)": module["float16"], **{f"bad: {k}": v for k, v in bad.items()},
            "keras path, own int8 (b)": orl["keras_path_own_int8"],
            "foreign path, own int8 (b)": orl["foreign_path_own_int8"],
            "foreign path, own probe files (b)": orl["foreign_path_own_probe_files"]}
    for name, r in rows.items():
        if "skipped" in r:
            print(f"{name:<34}skipped ({r['skipped']})")
            continue
        found = r["taps_found"] or {}
        print(f"{name:<34}{str(found.get('float', '-')) + '/' + str(found.get('quantized', '-')):>10}"
              f"{str(r['taps_matched'] or r.get('taps', '-')):>8}  {r['verdict']:<8}"
              f"{str(r['worst_tap'])[:31]:<32}"
              f"{r['worst_tap_sqnr_db']:>8.2f}")
    for label, value, rows_seen in (("deploy files", gap, orl["common_taps"]),
                                    ("same tensors (probe files)", same, orl["common_taps_same_tensors"])):
        print(f"worst-tap SQNR over the taps both paths see, foreign minus Keras, {label}: "
              f"{'n/a' if value is None else f'{value:+.2f} dB'} ({len(rows_seen)} taps)")
    print(f"goal met: {result['goal_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
