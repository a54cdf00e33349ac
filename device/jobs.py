"""Job queue for the board agent: one job at a time per model, the rest wait in order.

Each model gets its own worker thread (started on its first job) that owns the model's interpreter,
so jobs on different models run side by side while jobs on one model never share an interpreter.
Results are written atomically to ``<results>/<job id>.npz``; job records live in memory, so the
results folder is cleared at start-up, and only the newest ``keep`` finished jobs are kept.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import write_atomic

KINDS = ("ascent", "activations", "embeddings")


@dataclass
class Job:
    id: str
    model_id: str
    kind: str
    plan: bytes = field(repr=False)
    status: str = "queued"  # queued -> running -> done | failed
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model_id, "kind": self.kind, "status": self.status,
                "error": self.error, "submitted": self.submitted, "started": self.started,
                "finished": self.finished}


# execute(model_id, kind, plan_bytes, cache) -> result bytes. ``cache`` is a per-model dict the
# worker keeps across jobs (e.g. the loaded interpreter).
Executor = Callable[[str, str, bytes, dict], bytes]


class JobQueue:
    """Per-model FIFO queues, each drained by its own worker thread."""

    def __init__(self, results_dir: str | os.PathLike, execute: Executor, keep: int = 1000):
        self.results_dir = Path(results_dir)
        shutil.rmtree(self.results_dir, ignore_errors=True)  # results of jobs no record remembers
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._execute = execute
        self.keep = keep
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()

    def submit(self, model_id: str, kind: str, plan: bytes) -> Job:
        if kind not in KINDS:
            raise ValueError(f"job kind must be one of {KINDS}, got {kind!r}")
        job = Job(uuid.uuid4().hex, model_id, kind, plan)
        with self._lock:
            self._forget_old()
            self._jobs[job.id] = job
            q = self._queues.get(model_id)
            if q is None:
                q = self._queues[model_id] = queue.Queue()
                threading.Thread(target=self._work, args=(model_id, q), daemon=True,
                                 name=f"jobs-{model_id[:12]}").start()
        q.put(job)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job {job_id!r} on this agent (jobs do not survive a restart)")
            return self._jobs[job_id]

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.submitted)

    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.finished is not None),
                          key=lambda j: j.finished)
        for job in finished[:max(0, len(finished) - self.keep)]:
            del self._jobs[job.id]
            if job.result_path is not None:
                job.result_path.unlink(missing_ok=True)

    def _work(self, model_id: str, q: queue.Queue) -> None:
        cache: dict = {}
        while True:
            job: Job = q.get()
            job.status, job.started = "running", time.time()
            try:
                data = self._execute(model_id, job.kind, job.plan, cache)
                path = self.results_dir / f"{job.id}.npz"
                write_atomic(path, data)
                job.result_path, job.status = path, "done"
            except Exception as exc:  # a failed job must not kill the model's worker
                job.status = "failed"
                job.error = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, (ValueError, KeyError)):
                    job.error += "\n" + traceback.format_exc(limit=5)
            finally:
                job.finished = time.time()
                job.plan = b""
                q.task_done()
