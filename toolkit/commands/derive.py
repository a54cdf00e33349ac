"""`faceprobe derive`: a compact student of a large face network, pruned in dependency groups, distilled."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device.console import positive_int


def _fractions(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give keep fractions such as 0.5 or 1,0.75,0.5") from None


def _count(text: str) -> int:
    from ..derive import parse_count

    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "derive",
        help="derive a compact face network from a large one (structured pruning + distillation)",
        description="Prune TEACHER's channels in dependency groups (what a residual add, a concatenation, a "
        "depthwise conv or a batch norm ties together goes together), keep the most important "
        "ones (activation energy on the faces x outgoing weight energy) to a parameter or MAC "
        "budget or by keep fractions, copy their weights, then distil: the student learns to "
        "reproduce the teacher's normalised embedding on the faces under augmentation. No "
        "identity labels are needed (people are only held out for the per-epoch verification). "
        "The run dir gets derive.json, pruned.keras, checkpoints/ (every epoch), logs/ "
        "(TensorBoard) and model.keras, an ordinary faceprobe model with its taps.",
    )
    p.add_argument(
        "teacher", help="the face model to derive from (model.keras, e.g. `faceprobe import dlib`)"
    )
    p.add_argument("--data", help="a folder of faces (identity folders); default: synthetic faces")
    p.add_argument("--identities", help="use these identities only, e.g. s1-s30")
    p.add_argument("--recipe", help="derive recipe TOML, e.g. models/dlib-compact.toml")
    p.add_argument("--params", type=_count, help="parameter budget, e.g. 1.1M")
    p.add_argument("--macs", type=_count, help="multiply-accumulate budget per image, e.g. 150M")
    p.add_argument(
        "--keep",
        type=_fractions,
        metavar="FRACTIONS",
        help="keep fractions: one for every group, or one per group in depth order (--dry-run "
        "lists the groups)",
    )
    p.add_argument(
        "--size", type=positive_int, metavar="PX", help="the student's input size (default: the teacher's)"
    )
    p.add_argument("--epochs", type=positive_int, help="epochs of distillation (default: the recipe's)")
    p.add_argument("--minutes", type=float, help="bound the distillation's wall-clock time")
    p.add_argument(
        "--strategy", choices=("default", "mirrored", "multi-worker"), help="tf.distribute strategy"
    )
    p.add_argument(
        "--reconstruct",
        action="store_true",
        default=None,
        help="refit each pruned layer by least squares to the teacher's outputs before distilling",
    )
    p.add_argument("--align", action="store_true", help="align faces as dlib does (for dlib's network)")
    p.add_argument("--crop", action="store_true", help="detect and crop faces while loading")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="prune only: print the groups, the kept channels and the student's size",
    )
    p.add_argument(
        "--probe-every",
        type=positive_int,
        metavar="K",
        help="probe feature emergence every K distillation steps (writes RUN_DIR/emergence)",
    )
    p.add_argument("--out", help="run directory (required unless --dry-run)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def _config(args: argparse.Namespace):
    from ..derive import DeriveConfig, load_derive_config, validate_derive_config

    values = (load_derive_config(args.recipe) if args.recipe else DeriveConfig()).to_dict()
    if args.keep is not None and (args.params or args.macs):
        raise ValueError("give --params/--macs or --keep, not both")
    if any(
        v is not None for v in (args.params, args.macs, args.keep)
    ):  # a budget on the line replaces the recipe's
        values.update(params=args.params, macs=args.macs, keep=args.keep)
    values.update(
        {
            k: v
            for k, v in {
                "size": args.size,
                "epochs": args.epochs,
                "minutes": args.minutes,
                "strategy": args.strategy,
                "reconstruct": args.reconstruct,
            }.items()
            if v is not None
        }
    )
    cfg = validate_derive_config(values)
    if cfg.keep is None and cfg.params is None and cfg.macs is None:
        raise ValueError(
            "say how small the student should be: --params 1.1M, --macs 150M, --keep 0.5 or a "
            "--recipe that does"
        )
    return cfg


def _dry_run(args: argparse.Namespace, cfg) -> int:
    from ..data import load_identity_folders, parse_identities, synthesize
    from ..derive.prune import model_size
    from ..derive.run import plan_pruning
    from ..modelfile import load_face_model

    teacher, meta = load_face_model(args.teacher)
    size = int(teacher.input_shape[1])
    if args.data:
        images = load_identity_folders(
            args.data, image_size=size, align=args.align, crop=args.crop, progress=False,
            identities=parse_identities(args.identities) if args.identities else None,
        ).images
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            images = load_identity_folders(
                synthesize(tmp, identities=8, images_per_identity=4, size=size, progress=False),
                image_size=size,
            ).images
    graph, pruning = plan_pruning(teacher, images, meta["normalization"], cfg)
    t_params, t_macs = model_size(teacher)
    result = {
        "teacher_params": t_params,
        "teacher_macs": t_macs,
        "params": pruning.params,
        "macs": pruning.macs,
        "groups": pruning.group_sizes(graph),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for i, g in enumerate(result["groups"]):
        print(f"group {i:2d} {g['group']:24s} {g['channels']:5d} -> {g['kept']:5d}")
    print(
        f"parameters {t_params:,} -> {pruning.params:,}; "
        f"MACs {t_macs / 1e6:.1f} M -> {pruning.macs / 1e6:.1f} M"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from ..data import parse_identities
    from ..derive import derive
    from ..derive.run import RUN_ENTRIES

    cfg = None  # a resumed run keeps the settings it started with
    if args.resume and args.dry_run:
        raise ValueError("--dry-run shows a new pruning; drop --resume")
    if args.resume:
        if any(v is not None for v in (args.recipe, args.params, args.macs, args.keep, args.size)):
            raise ValueError(
                "--resume continues the run with the settings it started with; drop --recipe, "
                "--params, --macs, --keep and --size"
            )
    else:
        cfg = _config(args)
    if args.dry_run:
        return _dry_run(args, cfg)
    if not args.out:
        raise ValueError("--out RUN_DIR is required (or --dry-run to see the pruning only)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES) if out.is_dir() else []
    if foreign:
        raise ValueError(
            f"--out {out} holds files that are not a derive run (e.g. {foreign[0]}); choose a new folder"
        )
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = derive(
        args.teacher,
        out,
        cfg,
        data=args.data,
        identities=parse_identities(args.identities) if args.identities else None,
        align=args.align,
        crop=args.crop,
        resume=args.resume,
        probe_every=args.probe_every,
        progress=True,
        log=log,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(
            f"derived {result.params:,} parameters ({result.params / result.teacher_params:.0%} of the "
            f"teacher's), {result.macs / 1e6:.0f} M MACs; {result.epochs_completed} epochs in "
            f"{result.train_seconds / 60:.1f} min; held-out cosine to teacher "
            f"{result.holdout_cosine if result.holdout_cosine is not None else float('nan'):.4f}"
        )
        print(f"model: {result.model_path}")
    return 0
