"""Imported once by the sandbox's fork server, so that every child it forks starts warm: numpy, the job
code and the interpreter imported, and the interpreter's version looked up (a metadata scan that
costs a fresh process ~60 ms)."""

from . import runtime, tasks  # noqa: F401 - imported for the children

try:
    runtime.load_backend()
except ImportError:  # reported by each child's own attempt, with the install hint
    pass
