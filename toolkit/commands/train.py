"""`faceprobe train`: train a zoo face CNN from a TOML recipe into a run directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device.console import int_at_least, non_negative_int, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a face CNN from a recipe (margin softmax, checkpoints, resume)",
        description="Train the recipe's model with an ArcFace/CosFace head. The run dir gets config.json, "
                    "checkpoints/ (every epoch, atomic), logs/ (TensorBoard), history.json and model.keras "
                    "(embedding model with its taps and normalisation). Without --data, synthetic faces are "
                    "generated into RUN_DIR/data.")
    p.add_argument("--recipe", help="TOML recipe, e.g. models/tiny-synth.toml (required unless --resume)")
    p.add_argument("--data", help="identity-folder dataset (one sub-folder per person); default: synthetic")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch, with the settings saved "
                        "in its config.json (only --data and --strategy may change)")
    p.add_argument("--epochs", type=positive_int, help="total epochs (default: the recipe's epochs)")
    p.add_argument("--strategy", choices=("default", "mirrored", "multi-worker"),
                   help="tf.distribute strategy (multi-worker reads TF_CONFIG; default: the recipe's "
                        "strategy, usually default)")
    p.add_argument("--identities", help="train on these identities only, e.g. s1-s30 or alice,bob")
    p.add_argument("--crop", action="store_true", default=None, help="detect and crop faces while loading")
    p.add_argument("--batch-size", type=int_at_least(2),
                   help="global batch size (default: the recipe's batch_size)")
    p.add_argument("--seed", type=non_negative_int, help="random seed (default: the recipe's seed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override another recipe key (repeatable), e.g. --set margin=0.4; keys with a "
                        "flag of their own (data, epochs, strategy, identities, crop, batch_size, seed) "
                        "take the flag")
    p.add_argument("--probe-every", type=positive_int, metavar="K",
                   help="probe feature emergence every K training iterations (writes RUN_DIR/emergence)")
    p.add_argument("--json", action="store_true", help="print the training result as JSON")
    p.set_defaults(run=run)


# Recipe keys with a flag of their own: `--set` must not name them (the flag is the one way to set them).
FLAG_KEYS = {"data": "--data", "epochs": "--epochs", "strategy": "--strategy", "identities": "--identities",
             "crop": "--crop", "batch_size": "--batch-size", "seed": "--seed"}
# What may change when a run is resumed: where it runs and where its data now lives.
RESUME_FREE = ("data", "strategy")
# What a run directory holds (toolkit.train): anything else in --out is someone else's.
RUN_ENTRIES = {"config.json", "checkpoints", "logs", "data", "history.json", "train.json", "model.keras",
               "model.meta.json", "emergence", "workers"}


def resolve_config(args: argparse.Namespace):
    """The run's TrainConfig: the recipe with the flags and --set applied, or, with --resume, the settings
    saved in the run's config.json (a flag or recipe value that differs from them is an error)."""
    from ..train import load_train_config
    from ..training.config import TrainConfig, parse_set

    sets = parse_set(args.set)
    for key, value in sets.items():
        if key in FLAG_KEYS:
            raise ValueError(f"--set {key}={value}: {key} has its own flag; use {FLAG_KEYS[key]} instead")
    given = {k: v for k in FLAG_KEYS if (v := getattr(args, k)) is not None}
    if not args.resume:
        if not args.recipe:
            raise ValueError("--recipe RECIPE is required to start a run (e.g. models/tiny-synth.toml); "
                             "add --resume to continue the run in --out instead")
        return load_train_config(args.recipe).with_overrides(**given, **sets)
    saved_path = Path(args.out) / "config.json"
    if not saved_path.is_file():
        raise ValueError(f"--resume: {args.out} holds no run to continue (no config.json); start one with "
                         f"--recipe RECIPE --out {args.out}")
    try:
        saved = json.loads(saved_path.read_text())
        saved.pop("resolved", None)
        config = TrainConfig.from_dict(saved)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{saved_path} is not a faceprobe run configuration ({exc})") from None
    if args.recipe:
        recipe = load_train_config(args.recipe).to_dict()
        given = {**{k: v for k, v in recipe.items() if k not in ("description", "extra")}, **given}
    given.update(sets)
    saved = config.to_dict()
    differ = [f"{k}: the run has {saved[k]!r}, given {v!r}" for k, v in given.items()
              if k not in RESUME_FREE and saved.get(k) != v]
    if differ:
        raise ValueError(f"--resume continues {args.out} with the settings in its config.json, but "
                         + "; ".join(differ) + ". Drop those flags, or start a new run with another --out")
    return config.with_overrides(**{k: v for k, v in given.items() if k in RESUME_FREE})


def run(args: argparse.Namespace) -> int:
    from ..train import train

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES) if out.is_dir() else []
    if foreign:
        raise ValueError(f"--out {out} holds files that are not a faceprobe run (e.g. {foreign[0]}); "
                         "choose a new folder for the run")
    config = resolve_config(args)
    extra = []
    if args.probe_every is not None:
        from ..probe.emergence import EmergenceCallback
        from ..training.summaries import ProbePictures

        made: list[EmergenceCallback] = []

        def emergence(embedding_model, train_set, run_dir: Path):
            made.append(EmergenceCallback(embedding_model, train_set.images, every=args.probe_every,
                                          out_dir=Path(run_dir) / "emergence"))
            return made[-1]

        def pictures(embedding_model, train_set, run_dir: Path):  # after `emergence`: shows its snapshots
            cb = made[-1]
            return ProbePictures(cb.out_dir / "snapshots", Path(run_dir) / "logs" / "probe",
                                 [cb.stages[t["tap"]] for t in cb.plan.targets])

        extra += [emergence, pictures]
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
