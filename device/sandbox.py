"""Untrusted work in a child process under an address-space limit and a time limit.

Loading a model and running a job on it happen here, never in the agent's own process: a corrupt
flatbuffer can make the interpreter ask for gigabytes or crash outright, and then only the child
dies. Children are forked from a multiprocessing fork server that has imported numpy and the
interpreter once, so a child starts in about 10 ms, and never from the threaded agent itself.

The memory limit is ``RLIMIT_AS`` set by the child on itself at ``its size at start + allowance``, so
the allowance is what the work may add. Linux only (elsewhere the limit is not enforced and only
the time limit holds).

Children die with the agent, even when it is killed with SIGKILL: each child watches its pipe to the
agent (only the agent holds the other end, so the pipe breaks when the agent dies) and, on Linux, also
asks for SIGKILL when the fork server, its parent, dies (``PR_SET_PDEATHSIG``); the fork server exits
when the agent's end of multiprocessing's own liveness pipe closes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import re
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .files import disk_full

_context = None
_context_lock = threading.Lock()
PR_SET_PDEATHSIG = 1
DISK_FULL_MESSAGE = ("the board's disk is full: free space in the agent's store (DELETE /models/<id>) or "
                     "elsewhere on its disk, then submit the job again")


_PATH = re.compile(r"(?<![\w.~])(?:/[^\s'\":/]+)+/([^\s'\":/]+)")


def public_message(text: str) -> str:
    """An error message fit for a client: one line of at most 500 characters, folders cut from paths."""
    lines = _PATH.sub(r"\1", str(text)).strip().splitlines()
    return (lines[0] if lines else "unknown error")[:500]


class SandboxError(Exception):
    """Work in the child failed; ``kind`` is "error", "memory", "timeout", "crash" or "cancelled"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def _get_context():
    global _context
    with _context_lock:
        if _context is None:
            methods = multiprocessing.get_all_start_methods()
            _context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            if "forkserver" in methods:
                _context.set_forkserver_preload(["device._forkserver"])
        return _context


def vm_bytes(field: str = "VmSize") -> int | None:
    """A size of this process from /proc/self/status (default: virtual size) in bytes; None without /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _limit_self(memory_bytes: int, timeout_s: float) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing model leaves no core file behind
    size = vm_bytes()
    if size is not None:
        limit = size + int(memory_bytes)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # CPU seconds as a backstop should the parent die before it can stop us; threads add up.
    cpu = int(timeout_s * max(1, os.cpu_count() or 1)) + 30
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


def _die_with_agent(conn) -> None:
    """Exit as soon as the agent is gone: its end of ``conn`` closes (on any system), or the fork server
    that forked this child dies (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl: the pipe below still holds
            pass
    watched = os.dup(conn.fileno())  # a copy: closing conn at the end must not look like the agent dying

    def watch() -> None:
        poller = select.poll()
        poller.register(watched, select.POLLERR | select.POLLHUP)
        poller.poll()  # the write end of a pipe reports POLLERR once no reader is left
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="agent-liveness").start()


def _child(conn, target: Callable, args: tuple, memory_bytes: int, timeout_s: float) -> None:
    try:
        _die_with_agent(conn)
        _limit_self(memory_bytes, timeout_s)
        value = target(*args)
    except MemoryError:
        conn.send(("memory", "ran out of memory"))
    except OSError as exc:
        conn.send(("error", DISK_FULL_MESSAGE if disk_full(exc) else
                   public_message(f"{type(exc).__name__}: {exc}")))
    except Exception as exc:  # reported to the parent as the job's error
        conn.send(("error", public_message(f"{type(exc).__name__}: {exc}")))
    else:
        conn.send(("ok", value))
    finally:
        conn.close()


def run(target: Callable[..., Any], args: tuple, memory_bytes: int, timeout_s: float,
        cancel: threading.Event | None = None) -> Any:
    """``target(*args)`` in a child limited to ``memory_bytes`` more memory and ``timeout_s`` seconds.

    Returns what ``target`` returned (it must pickle), or raises SandboxError saying what went wrong.
    ``cancel``: set it to stop the child early.
    """
    ctx = _get_context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, target, args, memory_bytes, timeout_s), daemon=True)
    proc.start()
    send.close()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if receive.poll(0.05):
                try:
                    reply = receive.recv()
                except (EOFError, OSError):  # the child died without a word
                    break
                kind, value = reply
                if kind == "ok":
                    return value
                raise SandboxError(kind, value if kind == "error" else
                                   f"{value} (limit: {memory_bytes >> 20} MiB above the interpreter's own)")
            if cancel is not None and cancel.is_set():
                raise SandboxError("cancelled", "cancelled")
            if time.monotonic() > deadline:
                raise SandboxError("timeout", f"took longer than its limit of {timeout_s:g} s")
            if not proc.is_alive() and not receive.poll(0):
                break
        proc.join(5)
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            raise SandboxError("crash", f"the interpreter crashed ({name}); under a limit of "
                                        f"{memory_bytes >> 20} MiB above its own size this usually means the "
                                        "model asked for more memory")
        raise SandboxError("crash", f"the worker process ended without a result (exit code {code})")
    finally:
        receive.close()
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        if proc.exitcode is not None:
            proc.close()
