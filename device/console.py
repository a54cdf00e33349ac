"""Command-line behaviour shared by `faceprobe` and `faceprobe-agent` (standard library only).

One error line and exit 2 instead of a traceback (``--debug`` shows it), Ctrl-C as one line and exit 130,
native libraries' chatter on file descriptor 2 hidden unless ``--verbose``, warnings as one clean line,
``--help`` with defaults and examples, and argparse types that validate numbers where they are parsed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# Errors whose message already says what went wrong with which input.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, ImportError)

_interrupted = False


# ---------------------------------------------------------------------------------------------- numbers

def _number(kind: type, test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    return _number(int, lambda v: v >= low, "a positive integer" if low == 1 else f"an integer >= {low}")


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a number > 0")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
port_number = _number(int, lambda v: 0 <= v <= 65535, "a port number from 0 to 65535")


# ------------------------------------------------------------------------------------------------- help

def package_version() -> str:
    """The installed faceprobe's version, for ``--version``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("faceprobe")
    except PackageNotFoundError:
        return "unknown (not installed)"


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default (unless its help already names one) and keeps indented example
    lines of descriptions and epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == []
                or default == argparse.SUPPRESS
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})" if text else f"(default: {shown})"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in text.split("\n\n"):
            if block.startswith("  "):  # example commands: keep their lines
                blocks.append("\n".join(indent + line for line in block.splitlines()))
            else:
                blocks.append(super()._fill_text(block, width, indent))
        return "\n\n".join(blocks)


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def finish_parser(parser: argparse.ArgumentParser, version: str, examples: dict[str, str]) -> None:
    """Give ``parser`` and every nested subcommand the shared formatter, ``--debug``/``--verbose`` (also
    after the subcommand), and their examples (keyed "command" or "command action") as epilog;
    ``--version`` on the top level."""
    parser.add_argument("--version", action="version", version=f"{parser.prog} {version}")

    def walk(p: argparse.ArgumentParser, path: str, top: bool) -> None:
        p.formatter_class = HelpFormatter
        default = False if top else argparse.SUPPRESS
        p.add_argument("--debug", action="store_true", default=default,
                       help="show the full traceback of an error")
        p.add_argument("--verbose", action="store_true", default=default,
                       help="show TensorFlow's, the converter's and the interpreter's own messages")
        if path in examples and not p.epilog:
            lines = examples[path].strip().splitlines()
            p.epilog = "examples:\n\n" + "\n".join(f"  {line}" for line in lines)
        for name, child in _subparsers(p):
            walk(child, f"{path} {name}".strip(), False)

    walk(parser, "", True)


# ----------------------------------------------------------------------------------------------- output

def emit(line: str) -> None:
    """Print one line to stderr on its own line, even while a progress bar is drawn."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        tqdm.tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _close_bars() -> None:
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(tqdm.tqdm, "_instances", ())) if tqdm is not None else ():
        bar.leave = False
        bar.close()


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 (TensorFlow's C++ logging, CUDA probing, the TFLite
    converter and delegates) to /dev/null, while Python's own stderr keeps the terminal.

    Those libraries write below Python and ignore most settings, so the descriptor itself is moved.
    A no-op when stderr is not descriptor 2 (e.g. captured by a test runner).
    """
    try:
        real = enabled and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        _close_bars()  # a bar left open by an error must not outlive the stream it draws on
        sys.stderr.flush()
        os.dup2(saved, 2)
        sys.stderr.close()
        os.close(saved)
        sys.stderr = python_stderr


@contextlib.contextmanager
def clean_warnings(prog: str, own: Sequence[Path], show_all: bool) -> Iterator[None]:
    """Warnings as one line ``PROG: warning: MESSAGE``; other libraries' warnings only with ``show_all``."""
    roots = [str(p) for p in own]

    def show(message, category, filename, lineno, file=None, line=None):
        if show_all or any(str(filename).startswith(r) for r in roots):
            emit(f"{prog}: warning: {message}")

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # each distinct warning once
        warnings.showwarning = show
        yield


# ------------------------------------------------------------------------------------------- interrupts

def interrupted() -> bool:
    """Whether Ctrl-C was pressed during this command (even if some library swallowed the exception)."""
    return _interrupted


def raise_if_interrupted() -> None:
    """Stop before committing a file when Ctrl-C was pressed, even if the exception was swallowed."""
    if _interrupted:
        raise KeyboardInterrupt


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_recorded() -> Iterator[None]:
    global _interrupted
    _interrupted = False
    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted = False


# -------------------------------------------------------------------------------------------------- run

def _final(line: str) -> None:
    _close_bars()
    print(line, file=sys.stderr, flush=True)


def command_name(prog: str, args: argparse.Namespace, attrs: Sequence[str]) -> str:
    """``prog`` followed by the chosen subcommand (and action), e.g. ``faceprobe data synth``."""
    return " ".join([prog, *(str(getattr(args, a)) for a in attrs if getattr(args, a, None))])


def run_cli(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            dispatch: Callable[[argparse.Namespace], int | None], *, command_attrs: Sequence[str],
            interrupt_hint: Callable[[argparse.Namespace], str], own: Sequence[Path],
            expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS,
            before: Callable[[bool], None] | None = None) -> int:
    """Parse ``argv`` and run ``dispatch(args)`` with the shared behaviour; returns the exit code.

    ``before(verbose)`` runs first, e.g. to quiet libraries before they are imported.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed usage and the error (or --help): return, not raise
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    debug, verbose = bool(getattr(args, "debug", False)), bool(getattr(args, "verbose", False))
    name = command_name(prog, args, command_attrs)
    if before is not None:
        before(verbose)
    # The last message is printed inside the quiet context, after the progress bars it would follow are gone.
    with _sigint_recorded(), quiet_native_stderr(not verbose), clean_warnings(prog, own, verbose):
        try:
            code = int(dispatch(args) or 0)
            raise_if_interrupted()
            return code
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            _final(f"{name}: interrupted; {interrupt_hint(args)}")
            return EXIT_INTERRUPTED
        except Exception as exc:
            if debug:
                traceback.print_exc()
            if _interrupted:  # Ctrl-C, turned into another error by a library (e.g. inside a converter)
                _final(f"{name}: interrupted; {interrupt_hint(args)}")
                return EXIT_INTERRUPTED
            return _report_error(name, exc, expected, debug)


def _report_error(name: str, exc: Exception, expected: tuple[type[BaseException], ...], debug: bool) -> int:
    """One line for an error: its message when it is an expected kind, else its type and a --debug hint."""
    if isinstance(exc, expected):
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _final(f"{name}: error: {msg}")
    else:  # a bug or a library failure: still one line, the traceback on request
        where = "" if debug else " (rerun with --debug for the traceback)"
        _final(f"{name}: error: unexpected {type(exc).__name__}: {exc}{where}")
    return EXIT_ERROR
