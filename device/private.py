"""The agent's store is its private state: checked at start-up, read without following links.

An agent refuses a store in which anything (the store itself included) is a symbolic link, belongs to
another user or is writable by group or others, as ssh refuses a key that others could change. The
folders it makes are 0700 and the files 0600 whatever the umask. Files are opened one path component
at a time with ``O_NOFOLLOW``, so a link planted after start-up is refused, never followed out of the
store.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_FIX = ("the store is the agent's private state: give it to the agent's user (chown -R), chmod -R go-w, "
        "replace links with real folders and files, or start on a fresh --store")


class UnsafeStore(ValueError):
    """A store (or something in it) the agent must not trust; the message names it and what to do."""


def _doubt(st: os.stat_result) -> str | None:
    """Why an entry with this lstat must not be trusted, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return "is neither a folder nor a plain file"
    if st.st_uid != os.geteuid():
        return f"belongs to user {st.st_uid}, not to the agent's user {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_tree(root: Path) -> None:
    """Raise UnsafeStore naming the first entry at or under ``root`` that the agent must not trust."""
    todo = [Path(root)]
    while todo:
        path = todo.pop()
        st = os.lstat(path)
        why = _doubt(st)
        if why:
            raise UnsafeStore(f"refusing the store {root}: {path} {why}; {_FIX}")
        if stat.S_ISDIR(st.st_mode):
            todo.extend(path / name for name in os.listdir(path))


def make_dir(path: Path) -> None:
    """Make ``path`` a private folder (0700), or tighten it to 0700; UnsafeStore when it is not trusted."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    why = _doubt(st) or (None if stat.S_ISDIR(st.st_mode) else "is not a folder")
    if why:
        raise UnsafeStore(f"refusing {path}: it {why}; {_FIX}")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def is_plain_file(path: Path) -> bool:
    """A regular file, not a link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_plain_dir(path: Path) -> bool:
    """A folder, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def read_file(root: Path, *parts: str) -> bytes:
    """The bytes of ``root/parts...``, opened one component at a time without following a link below
    ``root``: a link raises OSError (ELOOP or ENOTDIR), as a missing file raises FileNotFoundError."""
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | nofollow)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            os.close(fd)
            fd = inner
        found = os.open(parts[-1], os.O_RDONLY | nofollow, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(found, "rb") as fh:
        return fh.read()


def make_file_private(path: Path) -> None:
    """Mode 0600 for a file the agent's child wrote (never through a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def check_secret_file(path: Path, what: str) -> None:
    """Refuse a secret (token, key) that group or others may read or change, as ssh refuses such a key."""
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise UnsafeStore(f"{what} {path} is readable or writable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
