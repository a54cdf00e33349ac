"""ORL open-set verification: train on people s1-s30, verify on pairs drawn only from s31-s40.

    python scripts/bench/orl_verification.py --data ../shared/data/att_faces --json

Trains with the models/mobilefacenet-orl.toml recipe and prints one JSON object (or a table) with the
10-fold verification accuracy, ROC AUC, EER, TAR@FAR, rank-1 and the training time. Embeddings use flip
test-time augmentation (image + mirror) unless --no-flip; the single-pass figures are reported beside them
under ``single_pass``, measured on the same model and pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "att_faces"),
                   help="ORL identity folders s1..s40")
    p.add_argument("--recipe", default=str(ROOT / "models" / "mobilefacenet-orl.toml"))
    p.add_argument("--train-identities", default="s1-s30")
    p.add_argument("--eval-identities", default="s31-s40")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--out", help="run dir to keep (default: a temporary one)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="score single-pass embeddings (no flip test-time augmentation)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the tiny recipe for one epoch on six people, two folds (seconds; the "
                        "figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(recipe=str(ROOT / "models" / "tiny-synth.toml"), train_identities="s1-s6",
                       eval_identities="s39-s40", epochs=1, folds=2, set=["input_size=32"])
        args = p.parse_args(argv)

    from toolkit.data import load_identity_folders, make_pairs, parse_identities
    from toolkit.evaluate import evaluate_model, format_table
    from toolkit.modelfile import load_face_model
    from toolkit.train import load_train_config, train
    from toolkit.training.config import parse_set

    overrides = parse_set(args.set)
    config = load_train_config(args.recipe).with_overrides(epochs=args.epochs, data=args.data, **overrides)
    fs = load_identity_folders(args.data, image_size=config.input_size, progress=not args.json,
                               identities=f"{args.train_identities},{args.eval_identities}")
    train_fs = fs.select(parse_identities(args.train_identities))
    eval_fs = fs.select(parse_identities(args.eval_identities))
    if set(train_fs.names) & set(eval_fs.names):
        raise SystemExit("train and eval identities overlap: the benchmark is open set")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
        result = train(config, out, data=train_fs, progress=not args.json, log=log)
        model, meta = load_face_model(result.model_path)
        pairs = make_pairs(eval_fs.labels, n_folds=args.folds, seed=config.seed)
        metrics = evaluate_model(model, eval_fs, pairs, normalization=meta["normalization"], flip=args.flip)
        single = (evaluate_model(model, eval_fs, pairs, normalization=meta["normalization"], flip=False)
                  if args.flip else metrics)

    report = {
        **{k: metrics[k] for k in ("verification_accuracy", "accuracy_std", "roc_auc", "eer", "tar_at_far",
                                   "rank1", "pairs", "folds", "flip_tta")},
        "single_pass": {k: single[k] for k in ("verification_accuracy", "roc_auc", "eer", "rank1")},
        "train_seconds": round(result.train_seconds, 1),
        "epochs": result.epochs_completed,
        "train_identities": f"{train_fs.names[0]}..{train_fs.names[-1]} ({len(train_fs.names)})",
        "eval_identities": f"{eval_fs.names[0]}..{eval_fs.names[-1]} ({len(eval_fs.names)})",
        "final_train_accuracy": result.final.get("accuracy"),
        "batchnorm": result.batchnorm,
        "recipe": {k: v for k, v in config.to_dict().items() if k not in ("data", "extra")},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(metrics))
        print(f"train seconds: {report['train_seconds']}, epochs: {report['epochs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
