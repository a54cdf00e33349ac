"""Where the quantized model runs during a check: the host's own interpreter, or board agents over HTTP.

A board holds both files of a variant: the deploy file (what ships) scores identities, the probe file
(with taps) answers the tap and feature questions. Both run through the board's own job code
(``device.tasks``), and each board reports the runtime configuration it ran them in. ``Board`` is what
the check asks of one; ``LocalBoard`` and ``RemoteBoard`` answer it, each holding its two files as
``deploy`` and ``probe``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from device import tasks
from device.bench import BenchSpec
from device.plan import ProbePlan, ProbeResult
from device.runtime import Runtime

if TYPE_CHECKING:
    from ..remote import AgentClient

CHUNK = 8  # images per interpreter job: bounds memory (a stem tap of 8 faces is ~6 MB)


class Board(Protocol):
    """A place the deploy and probe files of one variant run."""

    name: str
    deploy_path: Path  # the deploy file on this machine

    def info(self) -> dict:
        """The runtime configuration each file ran in."""

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """The deploy file's embeddings of normalised ``images``."""

    def activations(self, plan: ProbePlan) -> dict:
        """The probe file's tap activations of the plan's images (``values`` and ``stats`` per tap)."""

    def ascent(self, plan: ProbePlan) -> ProbeResult:
        """The plan by finite differences on the probe file."""

    def disagreement(self, plan: ProbePlan, reference: Path) -> ProbeResult:
        """A disagreement plan on the deploy file against ``reference`` (the float32 deploy file)."""

    def bench(self, files: list[Path], spec: BenchSpec, images: np.ndarray) -> dict:
        """``files`` timed interleaved where this board runs them."""


def _embedding_plan(images: np.ndarray) -> ProbePlan:
    return ProbePlan(targets=[], images=images)


def runtime_config(info: dict) -> dict:
    """What decides a board's numbers besides the model: runtime, version, kernels, threads, machine."""
    keys = ("runtime", "runtime_version", "kernels", "threads", "delegate", "delegate_nodes", "machine",
            "platform", "cpu_count")
    return {k: info.get(k) for k in keys}


class LocalBoard:
    """The exported deploy and probe files in this machine's LiteRT interpreter."""

    def __init__(self, deploy_tflite: str | os.PathLike, probe_tflite: str | os.PathLike,
                 threads: int | None = None, kernels: str = "xnnpack"):
        self.deploy = Runtime(deploy_tflite, threads=threads, kernels=kernels)
        self.probe = Runtime(probe_tflite, threads=threads, kernels=kernels)
        self.name = "host"
        self.deploy_path, self.threads, self.kernels = Path(deploy_tflite), threads, kernels

    def info(self) -> dict:
        return {"deploy": runtime_config(self.deploy.info()), "probe": runtime_config(self.probe.info())}

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """The deploy file's embeddings, chunk by chunk through the board's embeddings job."""
        return np.concatenate([tasks.run(self.deploy, _embedding_plan(images[s:s + CHUNK]), "embeddings")
                               ["embedding"] for s in range(0, len(images), CHUNK)])

    def activations(self, plan: ProbePlan) -> dict:
        return tasks.run(self.probe, plan, "activations")

    def ascent(self, plan: ProbePlan) -> ProbeResult:
        return tasks.run(self.probe, plan, "ascent")

    def disagreement(self, plan: ProbePlan, reference: Path) -> ProbeResult:
        second = Runtime(reference, threads=self.threads, kernels=self.kernels)
        return tasks.run(self.deploy, plan, "ascent", reference=second)

    def bench(self, files: list[Path], spec: BenchSpec, images: np.ndarray) -> dict:
        """``files`` timed interleaved here, in sandbox children with this board's threads and kernels."""
        from ..speed import bench_host

        return bench_host(files, spec, self.threads, self.kernels, images)


class RemoteBoard:
    """A board agent (`faceprobe-agent serve`) holding the deploy and the probe file; ``deploy`` and
    ``probe`` are the agent's ids of them."""

    def __init__(self, client: AgentClient, deploy_tflite: str | os.PathLike,
                 probe_tflite: str | os.PathLike):
        self.client = client
        self.name = client.url
        self.deploy_path = Path(deploy_tflite)
        self.deploy = client.push(Path(deploy_tflite))
        self.probe = client.push(Path(probe_tflite))
        self._health = client.health()
        self._runtimes: dict[str, dict] = {}

    def info(self) -> dict:
        """The agent's own account of itself, and the runtime each file ran in (from its job results)."""
        health = {k: self._health.get(k) for k in ("version", "runtime", "kernels", "threads", "machine",
                                                     "system", "python")}
        return {"agent": self.name, **health, **self._runtimes}

    def _run(self, role: str, plan: ProbePlan, kind: str):
        result = self.client.run(getattr(self, role), plan, kind)
        meta = result.meta if isinstance(result, ProbeResult) else result["meta"]
        if role not in self._runtimes and isinstance(meta, dict) and "runtime" in meta:
            self._runtimes[role] = runtime_config(meta["runtime"])
        return result

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self._run("deploy", _embedding_plan(images[s:s + CHUNK]), "embeddings")
                               ["embedding"] for s in range(0, len(images), CHUNK)])

    def activations(self, plan: ProbePlan) -> dict:
        return self._run("probe", plan, "activations")

    def ascent(self, plan: ProbePlan) -> ProbeResult:
        return self._run("probe", plan, "ascent")

    def disagreement(self, plan: ProbePlan, reference: Path) -> ProbeResult:
        """The agent receives the float file too; the plan names it by the agent's id."""
        named = replace(plan, objective={**plan.objective, "reference": self.client.push(reference)})
        return self._run("deploy", named, "ascent")

    def bench(self, files: list[Path], spec: BenchSpec, images: np.ndarray) -> dict:
        """``files`` timed interleaved by the agent's bench job, in its own configuration."""
        from ..speed import bench_agent

        return bench_agent(self.client, files, spec, images)
