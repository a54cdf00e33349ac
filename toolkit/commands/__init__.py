"""The subcommands of `faceprobe`, one module each (``add_parser`` and ``run``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager


def writes_folder(parser: argparse.ArgumentParser, *markers: str) -> None:
    """Declare that the command writes its outputs into the ``--out`` folder, recognised by ``markers``
    (globs); `faceprobe` then refuses a folder that holds something unless ``--force``, and never mixes
    two runs (see ``toolkit.atomic.output_dir``)."""
    parser.add_argument("--force", action="store_true",
                        help="replace --out when it holds an earlier output of this command")
    parser.set_defaults(outputs=markers)


@contextmanager
def flags(names: dict[str, str] | None = None) -> Iterator[None]:
    """Inside, a ParameterError of the domain code is raised again naming its command-line flag:
    ``names[parameter]``, else ``--`` and the parameter with dashes."""
    from ..params import ParameterError

    try:
        yield
    except ParameterError as exc:
        flag = (names or {}).get(exc.parameter) or "--" + exc.parameter.replace("_", "-")
        raise exc.named(flag) from None


def agent_trust_options(parser: argparse.ArgumentParser) -> None:
    """``--agent-fingerprint`` and ``--insecure``: how the board agents named by ``--agent`` are trusted."""
    parser.add_argument("--agent-fingerprint", action="append", default=[], metavar="SHA256",
                        help="the SHA-256 fingerprint of an https:// agent's certificate (printed by "
                             "`faceprobe-agent serve`; repeat, or comma-separated, for several agents). "
                             "Without it the fingerprint seen first is remembered and a change is refused")
    parser.add_argument("--insecure", action="store_true",
                        help="send the token over plain http:// to an agent beyond loopback (it crosses the "
                             "network in clear text)")


def agent_trust(args: argparse.Namespace):
    """The ``toolkit.remote.Trust`` of ``agent_trust_options``."""
    from ..remote import Trust

    return Trust.from_options(",".join(args.agent_fingerprint), args.insecure)
