"""Speed and memory of exported files where they run: on the host (in sandbox children, as a board runs
them) or on board agents through their ``bench`` job (``device.bench``), several files timed interleaved
on each machine so that their ratio holds there."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from device.bench import BenchPlan, BenchSpec, Sandboxing, local_files, run_bench
from device.tasks import JobLimits

from .remote import AgentClient, Fleet, Trust

HOST = "host"


def bench_host(files: Sequence[str | os.PathLike], spec: BenchSpec, threads: int | None = None,
               kernels: str = "xnnpack", images: np.ndarray | None = None) -> dict:
    """``files`` timed interleaved on this machine, each piece in a sandbox child as on a board."""
    limits = JobLimits()
    pairs = local_files(files)
    memory = [limits.model_memory_bytes + limits.job_memory_bytes] * len(pairs)
    return run_bench(pairs, spec, threads, kernels, images, Sandboxing(memory, limits.job_timeout_s))


def bench_agent(client: AgentClient, files: Sequence[str | os.PathLike], spec: BenchSpec,
                images: np.ndarray | None = None, timeout: float = 3600.0) -> dict:
    """``files`` pushed where needed and timed interleaved by one agent's bench job."""
    ids = [client.push(Path(f)) for f in files]
    shape = (0, *load_shape(files[0]))
    plan = BenchPlan(spec, np.zeros(shape, np.float32) if images is None else images, ids[1:])
    result = client.run(ids[0], plan, "bench", timeout)["stats"]
    for entry, path in zip(result["files"], files, strict=True):
        entry["file"] = Path(path).name  # the board names its stored copy; name the file that was sent
    return result


def load_shape(tflite: str | os.PathLike) -> tuple[int, ...]:
    from device.manifest import load_manifest, manifest_path_for

    return tuple(int(d) for d in load_manifest(manifest_path_for(tflite))["input"]["shape"][1:])


def bench_everywhere(files: Sequence[str | os.PathLike], spec: BenchSpec, agents: Sequence[str] = (),
                     token: str | None = None, host: bool = True, threads: int | None = None,
                     images: np.ndarray | None = None, trust: Trust | None = None) -> dict[str, dict]:
    """{"host" and each agent URL: its bench result of ``files``}; agents run at once, the host first."""
    out = {HOST: bench_host(files, spec, threads, images=images)} if host else {}
    if agents:
        out.update(Fleet(agents, token, trust=trust).map(lambda c: bench_agent(c, files, spec, images)))
    return out


def batch1_ms(entry: dict) -> float:
    """A bench file entry's best batch-1 latency in milliseconds."""
    return float(entry["latency"]["1"]["min_ms"])


def speed_of(result: dict, quantized: int = 0, reference: int = 1) -> dict:
    """One machine's speed of a quantized file beside the float32 file timed with it: the check's
    ``boards[*].speed``."""
    q, f = result["files"][quantized], result["files"][reference]
    ms, float_ms = batch1_ms(q), batch1_ms(f)
    return {"latency_ms": ms, "float32_latency_ms": float_ms, "speedup_b1": float_ms / ms,
            "median_ms": q["latency"]["1"]["median_ms"], "float32_median_ms": f["latency"]["1"]["median_ms"],
            "peak_rss_mib": q["peak_rss_mib"], "float32_peak_rss_mib": f["peak_rss_mib"],
            "bytes": q["bytes"], "float32_bytes": f["bytes"], "threads": result["threads"],
            "kernels": result["kernels"], "rounds": result["rounds"], "machine": result["runtime"]["machine"]}


def stage_shares(result: dict, whole: int, prefixes: dict[str, int]) -> dict[str, float]:
    """Each stage's share of the whole file's batch-1 latency, from files cut after each stage's last tap
    (``prefixes``: stage -> index in ``result["files"]``, in depth order): a stage costs what its prefix
    adds to the one before. What follows the last tap (the embedding head) is not a stage, so the shares
    sum to the last prefix's latency over the whole file's."""
    total = batch1_ms(result["files"][whole])
    shares, before = {}, 0.0
    for stage, index in prefixes.items():
        ms = batch1_ms(result["files"][index])
        shares[stage] = (ms - before) / total
        before = ms
    return shares

