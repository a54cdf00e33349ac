"""Atomic file writes (a crash leaves either the old file or the new one, never a torn one) and output
folders that never mix two runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from device.files import commit, write_atomic


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it over ``path``.

    The suffix lets writers that insist on an extension (Keras wants ``.keras``) keep it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        commit(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the board's writer: one implementation for both halves)."""
    write_atomic(path, data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def validate_output_file(path: str | os.PathLike, flag: str, force: bool) -> None:
    """Refuse to overwrite an existing output file unless ``force``; refuse a folder in its place."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {target} is a folder; give a file path")
    if target.exists() and not force:
        raise ValueError(f"{flag} {target} already exists; pass --force to replace it or choose another path")


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, force: bool, markers: Sequence[str], command: str,
               inputs: Sequence[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """The folder one command writes its outputs into: never a mix of two runs, nothing half-written.

    A new or empty folder is used as it is. A non-empty one is refused unless ``force`` and it holds
    one of ``markers`` (globs: the sign of an earlier output of the same ``command``); then it is moved
    aside and deleted only once the new outputs are complete. When the command fails, is interrupted or
    writes nothing, what it wrote is removed and the old folder put back. ``inputs`` must not lie inside
    a folder that is replaced.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {target} is a file; give a folder for the outputs")
    existed = target.is_dir()
    old = None
    if existed and any(target.iterdir()):
        if not force:
            raise ValueError(f"--out {target} already exists and is not empty; pass --force to replace it "
                             "or choose another folder")
        for item in inputs:
            if item and target.resolve() in Path(item).resolve().parents:
                raise ValueError(f"--out {target} holds the input {item}; choose another --out")
        if not any(any(target.glob(m)) for m in markers):
            raise ValueError(f"--out {target} holds files that `{command}` did not write (no "
                             f"{' or '.join(markers)}); "
                             "--force only replaces an earlier output of the same command: choose another "
                             "folder")
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, old)
        existed = False
    target.mkdir(parents=True, exist_ok=True)

    def undo() -> None:
        if existed:  # the user's own empty folder: empty it again
            for child in target.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)
        if old is not None:
            os.replace(old, target)

    try:
        yield target
    except BaseException:
        undo()
        raise
    if not any(target.iterdir()):  # nothing produced: nothing replaced
        undo()
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)
