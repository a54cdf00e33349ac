"""`faceprobe report`: re-render the pictures and the HTML page of a probe run from its saved results."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="re-render the pictures and the self-contained HTML report of a probe or check run",
        description="Rebuild figures/*.png and report.html (images inlined, no network) from saved results "
                    "only. For a probe: the plan, result, feature maps and findings that `faceprobe probe "
                    "--out RUN_DIR` saved (RUN_DIR may be the probe directory or a run directory holding "
                    "probe/; an emergence.json from `faceprobe train --probe-every` next to it is "
                    "included). For a check: the report.json and results `faceprobe check --out RUN_DIR` "
                    "saved.")
    p.add_argument("run_dir", help="probe or check output directory (or a run directory with probe/ inside)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not Path(args.run_dir).is_dir():
        raise FileNotFoundError(f"no folder {args.run_dir}: pass the --out folder of `faceprobe probe` or "
                                "`faceprobe check`")
    if (Path(args.run_dir) / "report.json").is_file():
        from ..report.check_page import render_check

        print(render_check(args.run_dir))
    else:
        from ..report.page import render

        print(render(args.run_dir))
    return 0
