"""Atomic file writes and in-memory .npz archives, shared by the board modules (and the host's
``toolkit.atomic``): numpy and the standard library only."""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .console import raise_if_interrupted


def _umask() -> int:
    try:  # Linux says it without changing it (setting it, even briefly, races other threads' files)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def commit(tmp: str | os.PathLike, path: str | os.PathLike, mode: int | None = None) -> None:
    """Give ``tmp`` (a mkstemp file, mode 0600) the mode a plain ``open`` would (or ``mode``) and rename it
    over ``path``.

    Ctrl-C pressed meanwhile stops here, even if a library swallowed the exception: nothing is committed.
    """
    raise_if_interrupted()
    os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
    os.replace(tmp, path)


def write_atomic(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a torn one.

    ``mode``: the file's mode whatever the umask (default: what a plain ``open`` gives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        commit(tmp, path, mode)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full: the user's to fix, not a bug."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def read_json(path: str | os.PathLike, what: str = "file"):
    """Parse the JSON file at ``path``; a damaged one is a ValueError naming it and what it should be."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid JSON {what} ({exc}); write it again") from None


def npz_bytes(arrays: dict[str, np.ndarray], compress: bool = True) -> bytes:
    """An .npz of ``arrays`` (compressed unless told otherwise), as bytes."""
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()
