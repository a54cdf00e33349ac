"""The subcommands of `faceprobe`, one module each (``add_parser`` and ``run``)."""

from __future__ import annotations

import argparse


def writes_folder(parser: argparse.ArgumentParser, *markers: str) -> None:
    """Declare that the command writes its outputs into the ``--out`` folder, recognised by ``markers``
    (globs); `faceprobe` then refuses a folder that holds something unless ``--force``, and never mixes
    two runs (see ``toolkit.atomic.output_dir``)."""
    parser.add_argument("--force", action="store_true",
                        help="replace --out when it holds an earlier output of this command")
    parser.set_defaults(outputs=markers)
