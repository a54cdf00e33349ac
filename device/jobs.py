"""Job queue for the board agent: one job at a time per model, the rest wait in order.

A model's queue is drained by a thread that exists only while the model has work; each job runs in
a sandbox child (``device.sandbox``), so no interpreter or interpreter thread outlives its job, and at
most ``parallel`` jobs run at once. Job records (``<jobs>/<id>.json``) and results
(``<results>/<id>.npz``) are written atomically and served after a restart; a job that was queued or
running when the agent stopped is failed on start-up. Only the newest ``keep`` finished jobs are kept.

Records, plans and results are private (0600 in 0700 folders). A job's child writes its result under a
partial name; only a job still running when the child succeeds has it renamed into place, so a result
that arrives for a cancelled job, or from a child of an agent that has since died, is never attached.
A full disk fails the job it stops (saying so), never the model's worker: the queue moves on.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import disk_full, write_atomic
from .private import FILE_MODE, is_plain_dir, is_plain_file, make_dir, make_file_private, read_file
from .sandbox import DISK_FULL_MESSAGE, SandboxError, public_message

KINDS = ("ascent", "activations", "embeddings", "bench")
FINISHED = ("done", "failed", "cancelled")
_RECORD_FIELDS = ("id", "model", "kind", "status", "error", "submitted", "started", "finished")


class QueueFull(Exception):
    """A model's queue is at its cap; ``retry_after`` is a guess in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Job:
    id: str
    model_id: str
    kind: str
    status: str = "queued"  # queued -> running -> done | failed | cancelled
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model_id, "kind": self.kind, "status": self.status,
                "error": self.error, "submitted": self.submitted, "started": self.started,
                "finished": self.finished}

    @classmethod
    def from_json(cls, d: dict) -> Job:
        return cls(id=d["id"], model_id=d["model"], kind=d["kind"], status=d["status"], error=d["error"],
                   submitted=d["submitted"], started=d["started"], finished=d["finished"])


# execute(model_id, kind, plan_path, result_path, cancel) writes the result at result_path or raises.
Executor = Callable[[str, str, Path, Path, threading.Event], None]


class JobQueue:
    """Per-model FIFO queues, each drained by a thread that lives while the queue has jobs."""

    def __init__(self, root: str | os.PathLike, execute: Executor, keep: int = 1000, queue_cap: int = 16,
                 parallel: int = 1):
        root = Path(root)
        self.jobs_dir, self.results_dir = root / "jobs", root / "results"
        make_dir(self.jobs_dir)
        make_dir(self.results_dir)
        self._execute = execute
        self.keep, self.queue_cap = keep, queue_cap
        self._running = threading.Semaphore(max(1, parallel))
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, deque[Job]] = {}
        self._lock = threading.Lock()
        self._load()

    # --- records -----------------------------------------------------------------------------

    def _record_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    def plan_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.plan.npz"

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / f"{job_id}.npz"

    def _partial_path(self, job_id: str) -> Path:
        return self.results_dir / f".{job_id}.partial.npz"

    def result_bytes(self, job_id: str) -> bytes:
        """A done job's result, never read through a link; FileNotFoundError when it is gone."""
        try:
            return read_file(self.results_dir, self.result_path(job_id).name)
        except FileNotFoundError:
            raise
        except OSError:
            raise FileNotFoundError(self.result_path(job_id).name) from None

    def _save(self, job: Job) -> None:
        write_atomic(self._record_path(job.id), json.dumps(job.to_json()).encode(), FILE_MODE)

    def _save_if_possible(self, job: Job) -> None:
        """Save a record unless the disk refuses (full, most likely): the job's state in memory is the truth
        meanwhile, and a restart fails a job whose record still says queued or running."""
        try:
            self._save(job)
        except OSError:
            pass

    def _load(self) -> None:
        """Records of an earlier run: finished ones are served again, unfinished ones failed."""
        for path in self.jobs_dir.iterdir():
            if is_plain_dir(path):
                continue  # none of the agent's: left alone
            if not is_plain_file(path) or path.name.endswith(".plan.npz") or path.name.startswith("."):
                path.unlink(missing_ok=True)  # plans of jobs that will not run, temp files of a crash
                continue
            try:
                job = Job.from_json(json.loads(path.read_text()))
                if set(job.to_json()) != set(_RECORD_FIELDS) or path.name != f"{job.id}.json":
                    raise ValueError
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            lost = job.status == "done" and not is_plain_file(self.result_path(job.id))
            if job.status not in FINISHED or lost:
                job.status, job.finished = "failed", job.finished or time.time()
                job.error = "the agent stopped before this job finished; submit it again"
                self._save_if_possible(job)
            self._jobs[job.id] = job
        known = {f"{j}.npz" for j, job in self._jobs.items() if job.status == "done"}
        for path in self.results_dir.iterdir():
            if path.name not in known and not is_plain_dir(path):
                path.unlink(missing_ok=True)  # partial results, and results of jobs that did not finish
        with self._lock:
            self._forget_old()

    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.status in FINISHED),
                          key=lambda j: j.finished or 0)
        for job in finished[:max(0, len(finished) - self.keep)]:
            del self._jobs[job.id]
            self.result_path(job.id).unlink(missing_ok=True)
            self._record_path(job.id).unlink(missing_ok=True)

    # --- queue -------------------------------------------------------------------------------

    def submit(self, model_id: str, kind: str, plan: bytes) -> Job:
        """Queue a checked plan (its bytes are kept on disk until the job runs); QueueFull at the cap."""
        if kind not in KINDS:
            raise ValueError(f"job kind must be one of {KINDS}, got {kind!r}")
        job = Job(uuid.uuid4().hex, model_id, kind)
        with self._lock:
            waiting = self._queues.get(model_id)
            if waiting is not None and len(waiting) >= self.queue_cap:
                raise QueueFull(f"model {model_id[:12]}… has {len(waiting)} jobs waiting, this agent's cap; "
                                "retry later", self._retry_after(model_id, len(waiting)))
        try:
            write_atomic(self.plan_path(job.id), plan, FILE_MODE)
            self._save(job)
        except BaseException:  # a full disk: nothing of this job stays behind
            self.plan_path(job.id).unlink(missing_ok=True)
            raise
        with self._lock:
            self._forget_old()
            self._jobs[job.id] = job
            waiting = self._queues.get(model_id)
            if waiting is None:
                waiting = self._queues[model_id] = deque()
                threading.Thread(target=self._work, args=(model_id, waiting), daemon=True,
                                 name=f"jobs-{model_id[:12]}").start()
            waiting.append(job)
        return job

    def _retry_after(self, model_id: str, waiting: int) -> int:
        took = [j.finished - j.started for j in self._jobs.values()
                if j.model_id == model_id and j.status == "done" and j.started and j.finished]
        per_job = sum(took[-20:]) / len(took[-20:]) if took else 5.0
        return int(min(3600, max(1, per_job * waiting)))

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job {job_id!r} on this agent")
            return self._jobs[job_id]

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.submitted)

    def active(self, model_id: str) -> int:
        """Jobs on ``model_id`` queued or running."""
        with self._lock:
            return sum(j.model_id == model_id and j.status not in FINISHED for j in self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once or stop a running one (its child is killed); ValueError if finished."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise KeyError(f"no job {job_id!r} on this agent")
            if job.status in FINISHED:
                raise ValueError(f"job {job_id} is already {job.status}")
            job.cancel.set()
            waiting = self._queues.get(job.model_id)
            if job.status == "queued" and waiting is not None and job in waiting:
                waiting.remove(job)
                self._finish(job, "cancelled", "cancelled before it started")
        return job

    def _finish(self, job: Job, status: str, error: str | None) -> None:
        job.status, job.error, job.finished = status, error, time.time()
        self.plan_path(job.id).unlink(missing_ok=True)
        self._save_if_possible(job)

    def _run(self, job: Job) -> tuple[str, str | None]:
        """Run a job; its (status, error). Its result is attached only if it is still running then."""
        partial = self._partial_path(job.id)
        try:
            self._save(job)
            with self._running:
                if job.cancel.is_set():
                    raise SandboxError("cancelled", "cancelled")
                self._execute(job.model_id, job.kind, self.plan_path(job.id), partial, job.cancel)
            with self._lock:
                if job.status != "running" or job.cancel.is_set():
                    raise SandboxError("cancelled", "cancelled")
                make_file_private(partial)
                os.replace(partial, self.result_path(job.id))
            return "done", None
        except SandboxError as exc:
            if exc.kind == "cancelled":
                return "cancelled", "cancelled while running"
            return "failed", exc.message
        except Exception as exc:  # a failed job must not kill the model's worker
            return "failed", (DISK_FULL_MESSAGE if disk_full(exc)
                              else public_message(f"{type(exc).__name__}: {exc}"))
        finally:
            partial.unlink(missing_ok=True)

    def _work(self, model_id: str, waiting: deque[Job]) -> None:
        while True:
            with self._lock:
                if not waiting:
                    del self._queues[model_id]  # the thread ends with its queue
                    return
                job = waiting.popleft()
                job.status, job.started = "running", time.time()
            status, error = self._run(job)
            with self._lock:
                self._finish(job, status, error)
