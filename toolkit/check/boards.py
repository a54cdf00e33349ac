"""Where the quantized model runs during a check: the host's own interpreter, or board agents over HTTP.

Both answer the same two questions through the board's own job code (``device.tasks``): the tap
activations of a set of images, and a probe plan's finite-difference ascent.
"""

from __future__ import annotations

import os
from pathlib import Path

from device import tasks
from device.plan import ProbePlan, ProbeResult
from device.runtime import Runtime


class LocalBoard:
    """The quantized probe model in this machine's LiteRT interpreter."""

    def __init__(self, probe_tflite: str | os.PathLike, threads: int | None = None, kernels: str = "xnnpack"):
        self.runtime = Runtime(probe_tflite, threads=threads, kernels=kernels)
        self.name = "host"

    def info(self) -> dict:
        return self.runtime.info()

    def activations(self, plan: ProbePlan) -> dict:
        return tasks.run(self.runtime, plan, "activations")

    def ascent(self, plan: ProbePlan) -> ProbeResult:
        return tasks.run(self.runtime, plan, "ascent")


class RemoteBoard:
    """A board agent (`faceprobe-agent serve`) holding the quantized probe model."""

    def __init__(self, url: str, probe_tflite: str | os.PathLike, token: str | None = None):
        from ..remote import AgentClient

        self.client = AgentClient(url, token)
        self.name = self.client.url
        self.model_id = self.client.push(Path(probe_tflite))
        self._health = self.client.health()

    def info(self) -> dict:
        return {"agent": self.name, **self._health}

    def activations(self, plan: ProbePlan) -> dict:
        return self.client.run(self.model_id, plan, "activations")

    def ascent(self, plan: ProbePlan) -> ProbeResult:
        return self.client.run(self.model_id, plan, "ascent")
