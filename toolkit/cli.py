"""`faceprobe`: one CLI whose subcommands mirror the flow (data, train, evaluate, probe, export, check,
deploy, report). Each subcommand lives in toolkit/commands/<name>.py with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .remote import AgentError

COMMANDS = ("data", "train", "evaluate", "probe", "export", "check", "deploy", "report", "import")
# Subcommand -> module where the name is a Python keyword.
MODULES = {"import": "imports"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceprobe",
        description="Train, probe, export and check compact face-recognition CNNs for TFLite boards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"toolkit.commands.{MODULES.get(name, name)}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, AgentError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"faceprobe {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
