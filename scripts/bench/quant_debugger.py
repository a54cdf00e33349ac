"""Cross-check: faceprobe's per-tap RMSE/scale against tf.lite.experimental.QuantizationDebugger's figure.

    python scripts/bench/quant_debugger.py --json                  # untrained mobilefacenet, synthetic faces
    python scripts/bench/quant_debugger.py --arch tiny --size 48 --json
    python scripts/bench/quant_debugger.py --model runs/x/model.keras --data ../shared/data/att_faces --json

Both sides see the same int8 quantization (the debugger's converter is set up as the export's int8 probe
conversion, on the same calibration sample) and the same images. The figures differ in what they compare:
the debugger's NumericVerify ops compare each quantized op with its float op run on the dequantized
quantized inputs (a local, per-layer error), faceprobe compares float Keras run from the input with the
quantized interpreter (end to end). They should agree at the first tap, whose float op the debugger feeds
the float input itself, and faceprobe's should be at least the debugger's deeper down, where the error
of the layers before adds to the layer's own. ``ratio`` is faceprobe / debugger; ``tensor`` is the tap's
output in the exported probe model, ``debugger_tensor`` the int8 tensor the debugger verified for it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def quantized_output_tensors(content: bytes) -> dict[str, tuple[int, str]]:
    """Signature output key -> (index, name) of the int8 tensor the output dequantizes (the output itself
    when it is not a DEQUANTIZE result)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without delegates: DELEGATE nodes would claim the tensors their subgraphs produce.
    it = Interpreter(model_content=content,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    producers = {t: op for op in it._get_ops_details() for t in op["outputs"]}
    out = {}
    for key, detail in it.get_signature_runner().get_output_details().items():
        op = producers.get(detail["index"])
        index = int(op["inputs"][0]) if op and op["op_name"] == "DEQUANTIZE" else int(detail["index"])
        out[key] = (index, names[index])
    return out


def debugger_figures(probe_model, calibration: np.ndarray, images: np.ndarray,
                     workdir: Path) -> dict[str, dict]:
    """QuantizationDebugger's layer statistics for each signature output of ``probe_model``:
    {key: {"tensor", "scale", "mean_squared_error", "rmse_over_scale"}} (the tutorial's
    ``sqrt(mean_squared_error) / scale``); outputs without a NumericVerify op are left out."""
    import tensorflow as tf

    from toolkit.export.convert import export_saved_model, int8_converter, representative

    # The export's own int8 converter: the debugger calibrates, then quantizes with mlir_quantize as the
    # export does, adding NumericVerify ops.
    converter = int8_converter(export_saved_model(probe_model, workdir / "saved_probe"), calibration)
    with warnings.catch_warnings():
        # The debugger runs its model in tf.lite.Interpreter, which warns of its own deprecation.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_dataset=representative(images))
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    by_tensor = {int(row["tensor_idx"]): row for row in csv.DictReader(dump)}
    figures = {}
    for key, (index, name) in quantized_output_tensors(debugger.quant_model).items():
        row = by_tensor.get(index)
        if row is None:
            continue
        scale, mse = float(row["scale"]), float(row["mean_squared_error"])
        figures[key] = {"tensor": name, "scale": scale, "mean_squared_error": mse,
                        "rmse_over_scale": float(np.sqrt(mse) / scale)}
    return figures


def cross_check(model, meta: dict, source: Path, faces: np.ndarray, n_images: int, calibration_size: int,
                seed: int, workdir: Path) -> dict:
    """Export int8, run faceprobe's tap level and the debugger on the same images; the comparison rows."""
    from device.manifest import load_manifest, manifest_path_for
    from toolkit.check.boards import LocalBoard
    from toolkit.check.levels import tap_level, tap_scales
    from toolkit.data import normalize
    from toolkit.export import Calibration, Recipe, calibration_sample, export_keras
    from toolkit.export.graph import output_tensor_names
    from toolkit.zoo import tap_key, tap_model

    norm = meta["normalization"]
    size = int(model.input_shape[1])
    recipe = Recipe("int8", calibration=Calibration(count=calibration_size, seed=seed))
    files = export_keras(model, meta, workdir / "export", [recipe], calibration=faces, source=source)["int8"]
    probe = files["probe"]
    # The export's own calibration draw, so the debugger's quantization parameters are the export's.
    calibration = normalize(calibration_sample(faces, size, calibration_size, seed), norm)
    rng = np.random.default_rng(seed + 1)
    pick = np.sort(rng.choice(len(faces), size=min(n_images, len(faces)), replace=False))
    images = normalize(faces[pick], norm)

    board = LocalBoard(files["deploy"], probe)
    scales = tap_scales(load_manifest(manifest_path_for(probe)))
    ours = tap_level(model, board, images, scales)
    theirs = debugger_figures(tap_model(model), calibration, images, workdir)
    exported = output_tensor_names(probe.read_bytes())
    rows = []
    for r in ours:
        key = tap_key(r["tap"])
        d = theirs.get(key)
        fp, dbg = r["rmse_over_scale"], d["rmse_over_scale"] if d else None
        rows.append({"tap": r["tap"], "stage": r["stage"], "tensor": exported[key],
                     "debugger_tensor": d["tensor"] if d else None,
                     "faceprobe_scale": scales.get(r["tap"]), "debugger_scale": d["scale"] if d else None,
                     "faceprobe_rmse_over_scale": fp, "debugger_rmse_over_scale": dbg,
                     "ratio": fp / dbg if fp is not None and dbg else None})
    return {"images": len(images), "calibration_images": len(calibration), "runtime": board.info(),
            "taps": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    """First-tap ratio, median/min/max ratio, the deeper taps' smallest ratio, and how far apart the two
    sides' quantization scales are (0 when the debugger quantized exactly as the export did)."""
    matched = [r for r in rows if r["ratio"] is not None]
    if not matched:
        raise RuntimeError("no tap output has a NumericVerify op in the debugger's model; nothing to compare")
    ratios = np.array([r["ratio"] for r in matched])
    deeper = ratios[1:] if matched[0] is rows[0] else ratios
    scale_diff = [abs(r["debugger_scale"] / r["faceprobe_scale"] - 1)
                  for r in matched if r["faceprobe_scale"]]
    return {
        "first_tap": rows[0]["tap"],
        "first_tap_ratio": rows[0]["ratio"],
        "median_ratio": float(np.median(ratios)),
        "min_ratio": float(ratios.min()),
        "max_ratio": float(ratios.max()),
        "deeper_min_ratio": float(deeper.min()) if len(deeper) else None,
        "taps_compared": len(matched),
        "taps_total": len(rows),
        "max_scale_relative_difference": float(max(scale_diff)) if scale_diff else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="trained model.keras (default: an untrained zoo model, see --arch)")
    p.add_argument("--arch", default="mobilefacenet", choices=("mobilefacenet", "tiny"),
                   help="zoo model when no --model is given")
    p.add_argument("--size", type=int, default=112, help="input size of the zoo model")
    p.add_argument("--data", help="folder of identity folders (default: synthetic faces)")
    p.add_argument("--images", type=int, default=16, help="images both sides compare on")
    p.add_argument("--calibration-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the tiny model at 32 px on 4 faces (seconds; the figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(arch="tiny", size=32, images=4, calibration_size=16)
        args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")

    import keras

    from toolkit.data import load_identity_folders, synthesize
    from toolkit.modelfile import load_face_model, save_face_model
    from toolkit.zoo import get_model

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            source = Path(args.model)
        else:
            keras.utils.set_random_seed(args.seed)
            source = save_face_model(get_model(args.arch, input_size=args.size), Path(tmp) / "model.keras")
        model, meta = load_face_model(source)
        size = int(model.input_shape[1])
        folder = args.data or synthesize(Path(tmp) / "faces", identities=10, images_per_identity=5, size=size,
                                         seed=args.seed, progress=False)
        faces = load_identity_folders(folder, image_size=size, progress=False).images
        result = {"model": meta.get("architecture", model.name), "trained": bool(args.model),
                  "input_size": size, "data": str(args.data) if args.data else "synthetic (10 x 5)",
                  **cross_check(model, meta, source, faces, args.images, args.calibration_size, args.seed,
                                Path(tmp))}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} {size}px, {result['images']} images, "
          f"{result['calibration_images']} calibration images")
    print(f"{'tap':<22}{'faceprobe':>12}{'debugger':>12}{'ratio':>8}")
    for r in result["taps"]:
        fp, dbg, ratio = (f"{v:.4f}" if v is not None else "-" for v in
                          (r["faceprobe_rmse_over_scale"], r["debugger_rmse_over_scale"], r["ratio"]))
        print(f"{r['tap']:<22}{fp:>12}{dbg:>12}{ratio:>8}")
    print(json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
