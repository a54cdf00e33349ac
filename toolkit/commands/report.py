"""`faceprobe report`: re-render the pictures and the HTML page of a probe run from its saved results."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="re-render the probe pictures and the self-contained HTML report of a run",
        description="Rebuild figures/*.png and report.html (images inlined, no network) from the plan, "
                    "result, feature maps and findings that `faceprobe probe --out RUN_DIR` saved. RUN_DIR "
                    "may be the probe directory or a run directory holding probe/; an emergence.json from "
                    "`faceprobe train --probe-every` next to it is included.")
    p.add_argument("run_dir", help="probe output directory (or a run directory with probe/ inside)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report.page import render

    print(render(args.run_dir))
    return 0
