"""`faceprobe train`: train a zoo face CNN from a TOML recipe into a run directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a face CNN from a recipe (margin softmax, checkpoints, resume)",
        description="Train the recipe's model with an ArcFace/CosFace head. The run dir gets config.json, "
                    "checkpoints/ (every epoch, atomic), logs/ (TensorBoard), history.json and model.keras "
                    "(embedding model with its taps and normalisation). Without --data, synthetic faces are "
                    "generated into RUN_DIR/data.")
    p.add_argument("--recipe", required=True, help="TOML recipe, e.g. models/tiny-synth.toml")
    p.add_argument("--data", help="identity-folder dataset (one sub-folder per person); default: synthetic")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run dir's last completed epoch (same total schedule)")
    p.add_argument("--epochs", type=int, help="total epochs (default: the recipe's epochs)")
    p.add_argument("--strategy", choices=("default", "mirrored", "multi-worker"),
                   help="tf.distribute strategy (multi-worker reads TF_CONFIG; default: the recipe's "
                        "strategy, usually default)")
    p.add_argument("--identities", help="train on these identities only, e.g. s1-s30 or alice,bob")
    p.add_argument("--crop", action="store_true", default=None, help="detect and crop faces while loading")
    p.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's batch_size)")
    p.add_argument("--seed", type=int, help="random seed (default: the recipe's seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key (repeatable), e.g. --set margin=0.4")
    p.add_argument("--probe-every", type=int, metavar="K",
                   help="probe feature emergence every K training iterations (writes RUN_DIR/emergence)")
    p.add_argument("--json", action="store_true", help="print the training result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train import load_recipe, train
    from ..training.config import parse_set

    config = load_recipe(args.recipe).with_overrides(
        data=args.data, epochs=args.epochs, strategy=args.strategy, identities=args.identities,
        crop=args.crop, batch_size=args.batch_size, seed=args.seed, **parse_set(args.set))
    extra = []
    if args.probe_every is not None:
        if args.probe_every < 1:
            raise ValueError(f"--probe-every must be >= 1, got {args.probe_every}")
        from ..probe.emergence import EmergenceCallback

        def emergence(embedding_model, train_set, run_dir: Path):
            return EmergenceCallback(embedding_model, train_set.images, every=args.probe_every,
                                     out_dir=Path(run_dir) / "emergence")

        extra.append(emergence)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = train(config, args.out, resume=args.resume, extra_callbacks=extra, progress=True, log=log)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        final = result.final
        print(f"trained {result.epochs_completed} epochs on {result.train_images} images of "
              f"{result.identities} identities; final loss {final.get('loss', float('nan')):.4f}, "
              f"training accuracy {final.get('accuracy', float('nan')):.2%}")
        print(f"model: {result.model_path}")
    return 0
