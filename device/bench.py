"""How fast a model runs on this board and what memory it costs: the board's own clock.

Timing: warm-up, then rounds; in each round every file is invoked once at every batch size, in turn, so
that load from other processes falls on all files alike and a ratio between them holds on a busy board.
Latency is reported as min / median / p90 of the rounds; other processes only ever add time, so the
minimum is the file's own cost and the median what a user sees. Inputs are real-valued: the caller's
normalised faces, else uniform draws over the manifest's input range (never zeros).

Memory: the peak resident size of a sandbox child that loaded one file and ran it at every batch size,
over the peak of a child that loaded nothing (both forked from the same warm server, peaks reset at
start), so what the interpreter, its arena and the weights cost is what remains. LiteRT's Python API
does not expose the arena's size, so ``arena_bytes`` is None there.

On the agent this is the ``bench`` job: the plan archive's images are the inputs and its JSON carries a
``bench`` section (the other held models timed with the queued one, rounds, warm-up, batch sizes,
threads), bounded like every plan (``PlanTooLarge``, answered 413).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import sandbox
from .archive import PlanArchive, PlanTooLarge
from .files import npz_bytes
from .manifest import load_manifest, manifest_path_for
from .plan import ProbePlan
from .runtime import Runtime
from .sandbox import vm_bytes

BENCH_SCHEMA = "faceprobe.bench/1"
MIB = float(1 << 20)


@dataclass(frozen=True)
class BenchLimits:
    """What a board accepts in one bench job (more is answered 413)."""

    max_models: int = 8
    max_rounds: int = 5000
    max_warmup: int = 200
    max_batch: int = 64
    max_batch_sizes: int = 4
    max_threads: int = 64
    max_seconds: float = 600.0


@dataclass(frozen=True)
class BenchSpec:
    """How to time: ``rounds`` timed invocations per file and batch size after ``warmup`` untimed ones;
    ``threads`` None keeps the board's own configuration; the timing stops after ``max_seconds`` with
    the rounds done so far (reported)."""

    rounds: int = 200
    warmup: int = 10
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("rounds", "warmup"):
            value = getattr(self, name)
            least = 1 if name == "rounds" else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"bench {name} must be an integer >= {least}, got {value!r}")
        sizes = tuple(self.batch_sizes)
        if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
            raise ValueError(f"bench batch_sizes must be positive integers, got {self.batch_sizes!r}")
        object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(sizes)))
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"bench threads must be an integer >= 1 or null, got {self.threads!r}")
        if not isinstance(self.max_seconds, int | float) or not 0 < self.max_seconds < float("inf"):
            raise ValueError(f"bench max_seconds must be a number > 0, got {self.max_seconds!r}")

    def to_json(self) -> dict:
        return {**asdict(self), "batch_sizes": list(self.batch_sizes)}

    @classmethod
    def from_json(cls, d: Any) -> BenchSpec:
        if not isinstance(d, dict):
            raise ValueError(f"bench must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"rounds", "warmup", "batch_sizes", "threads", "max_seconds", "models"}
        if unknown:
            raise ValueError(f"bench has unknown keys {sorted(unknown)}")
        sizes = d.get("batch_sizes", [1])
        if not isinstance(sizes, list):
            raise ValueError(f"bench batch_sizes must be a list of integers, got {sizes!r}")
        return cls(**{k: d[k] for k in ("rounds", "warmup", "threads", "max_seconds") if k in d},
                   batch_sizes=tuple(sizes))

    def check(self, limits: BenchLimits, models: int) -> None:
        """PlanTooLarge when this spec (on ``models`` files) is past ``limits``."""
        checks = [(models, limits.max_models, "models"), (self.rounds, limits.max_rounds, "rounds"),
                  (self.warmup, limits.max_warmup, "warm-up invocations"),
                  (max(self.batch_sizes), limits.max_batch, "images in a batch"),
                  (len(self.batch_sizes), limits.max_batch_sizes, "batch sizes"),
                  (self.threads or 1, limits.max_threads, "threads"),
                  (self.max_seconds, limits.max_seconds, "seconds of timing")]
        for value, limit, what in checks:
            if value > limit:
                raise PlanTooLarge(f"the bench asks for {value:g} {what}; this agent allows at most "
                                   f"{limit:g}")


@dataclass
class BenchPlan:
    """A bench job: ``models`` (ids of held models timed beside the queued one), the spec, and the input
    images (normalised faces; may be empty: then the manifest's input range is drawn from)."""

    spec: BenchSpec = field(default_factory=BenchSpec)
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 3), np.float32))
    models: list[str] = field(default_factory=list)

    def to_bytes(self, compress: bool = True) -> bytes:
        """A plan archive (the format every job body has) whose JSON carries the ``bench`` section."""
        doc = {**ProbePlan(targets=[], images=self.images).to_json(),
               "bench": {**self.spec.to_json(), "models": list(self.models)}}
        return npz_bytes({"images": np.asarray(self.images, np.float32),
                          "plan_json": np.frombuffer(json.dumps(doc).encode(), np.uint8)}, compress)

    @classmethod
    def from_archive(cls, archive: PlanArchive) -> BenchPlan:
        """The bench job in an opened plan archive (ValueError naming the field when malformed)."""
        section = archive.json.get("bench")
        spec = BenchSpec.from_json(section)
        models = section.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError(f"bench models must be a list of model ids, got {str(models)[:80]}")
        return cls(spec, archive.plan().images, list(dict.fromkeys(models)))

    @classmethod
    def from_bytes(cls, data: bytes | str | os.PathLike) -> BenchPlan:
        with PlanArchive(data) as archive:
            return cls.from_archive(archive)


# ------------------------------------------------------------------------------------------- timing

def input_range(manifest: dict) -> tuple[float, float]:
    """The normalised values of pixels 0 and 255 under the manifest's normalisation."""
    norm = manifest["input"]["normalization"]
    return (0.0 - norm["mean"]) / norm["scale"], (255.0 - norm["mean"]) / norm["scale"]


def bench_inputs(manifest: dict, images: np.ndarray | None, batch: int, seed: int = 0) -> np.ndarray:
    """A batch of real-valued inputs: ``images`` repeated to ``batch``, else uniform over the input range."""
    shape = tuple(int(d) for d in manifest["input"]["shape"][1:])
    if images is not None and len(images):
        images = np.asarray(images, np.float32)
        if tuple(images.shape[1:]) != shape:
            raise ValueError(f"bench images have shape {images.shape}, the model takes "
                             f"(n, {', '.join(map(str, shape))})")
        return images[np.arange(batch) % len(images)]
    lo, hi = input_range(manifest)
    return np.random.default_rng(seed).uniform(lo, hi, (batch, *shape)).astype(np.float32)


def time_interleaved(calls: Sequence[Callable[[], Any]], rounds: int, warmup: int = 1,
                     max_seconds: float = float("inf")) -> list[np.ndarray]:
    """Milliseconds of each call per round, the calls timed in turn round by round after ``warmup``
    untimed rounds; stops early (fewer rounds, at least one) once ``max_seconds`` have passed."""
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    deadline = time.perf_counter() + max_seconds
    for _ in range(rounds):
        for call, times in zip(calls, samples, strict=True):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1000.0)
        if time.perf_counter() > deadline:
            break
    return [np.asarray(s) for s in samples]


def latency_stats(samples_ms: np.ndarray) -> dict[str, float | int]:
    """min / median / p90 of one file's round times, in milliseconds."""
    return {"min_ms": float(np.min(samples_ms)), "median_ms": float(np.median(samples_ms)),
            "p90_ms": float(np.percentile(samples_ms, 90)), "runs": int(len(samples_ms))}


def latency_ms(tflites: Sequence[str | os.PathLike], repeats: int = 200, threads: int | None = 1,
               kernels: str = "xnnpack") -> list[float]:
    """Best-of-``repeats`` batch-1 latency of each model in this process's interpreter, the models timed
    in turn round by round on real-valued inputs; other processes only ever add time, so the minimum is
    the model's own. 30 rounds left the ratio of two files with the same graph 10 % apart under load; 200
    hold it within 2 % (a millisecond model costs well under a second)."""
    runtimes = [Runtime(t, threads=threads, kernels=kernels) for t in tflites]
    calls = [_call(rt, bench_inputs(rt.manifest, None, 1)) for rt in runtimes]
    return [float(np.min(s)) for s in time_interleaved(calls, repeats, warmup=1)]


def _call(runtime: Runtime, x: np.ndarray) -> Callable[[], Any]:
    return lambda: runtime.run(x)


def time_files(files: Sequence[tuple[str, str]], spec: BenchSpec, threads: int | None, kernels: str,
               images: np.ndarray | None) -> dict:
    """Every file at every batch size, interleaved (in the calling process): per file its latency stats by
    batch size and the runtime it ran in."""
    runtimes = [Runtime(t, m, threads=threads, kernels=kernels) for t, m in files]
    keys = [(i, b) for i in range(len(runtimes)) for b in spec.batch_sizes]
    calls = [_call(runtimes[i], bench_inputs(runtimes[i].manifest, images, b)) for i, b in keys]
    samples = time_interleaved(calls, spec.rounds, spec.warmup, spec.max_seconds)
    by_file: list[dict[str, dict]] = [{} for _ in runtimes]
    for (i, b), s in zip(keys, samples, strict=True):
        by_file[i][str(b)] = latency_stats(s)
    return {"latency": by_file, "rounds": int(len(samples[0])),
            "runtime": [rt.info() for rt in runtimes]}


# ------------------------------------------------------------------------------------------- memory

def _reset_peak() -> None:
    try:  # Linux >= 4.0: the peak restarts from the current size (a fork inherits its server's peak)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def baseline_peak() -> int | None:
    """Peak resident bytes of a sandbox child that does nothing (run in that child)."""
    _reset_peak()
    return vm_bytes("VmHWM")


def model_peak(tflite: str, manifest: str, threads: int | None, kernels: str,
               batch_sizes: Sequence[int], images: np.ndarray | None) -> int | None:
    """Peak resident bytes of a sandbox child that loaded one file and ran it once per batch size."""
    _reset_peak()
    runtime = Runtime(tflite, manifest, threads=threads, kernels=kernels)
    for b in batch_sizes:
        runtime.run(bench_inputs(runtime.manifest, images, b))
    return vm_bytes("VmHWM")


# -------------------------------------------------------------------------------------------- a run

@dataclass(frozen=True)
class Sandboxing:
    """Limits of the children a bench runs in: memory each file may add, time the whole run may take."""

    memory_bytes: Sequence[int]
    timeout_s: float
    cancel: threading.Event | None = None


def run_bench(files: Sequence[tuple[str | os.PathLike, str | os.PathLike]], spec: BenchSpec,
              threads: int | None, kernels: str, images: np.ndarray | None, limits: Sandboxing,
              benchmark_model: str | None = None) -> dict:
    """Time ``files`` ((tflite, manifest) pairs) interleaved and measure each one's memory, every piece in
    a sandbox child, with the board's ``threads`` and ``kernels`` (``spec.threads`` overrides the
    threads). Returns the bench result (schema ``faceprobe.bench/1``)."""
    if benchmark_model and not os.access(benchmark_model, os.X_OK):
        raise FileNotFoundError(f"--benchmark-model {benchmark_model} is not an executable file")
    files = [(str(t), str(m)) for t, m in files]
    threads = spec.threads or threads
    end = time.monotonic() + limits.timeout_s

    def child(target: Callable, args: tuple, memory: int) -> Any:
        left = end - time.monotonic()
        if left <= 0:
            raise sandbox.SandboxError("timeout", f"took longer than its limit of {limits.timeout_s:g} s")
        return sandbox.run(target, args, memory, left, limits.cancel)

    least = min(limits.memory_bytes)
    base = child(baseline_peak, (), least)
    peaks = [child(model_peak, (t, m, threads, kernels, spec.batch_sizes, images), mem)
             for (t, m), mem in zip(files, limits.memory_bytes, strict=True)]
    timed = child(time_files, (files, spec, threads, kernels, images), sum(limits.memory_bytes))
    out = []
    rows = zip(files, peaks, timed["latency"], timed["runtime"], strict=True)
    for (tflite, _), peak, latency, info in rows:
        cost = None if peak is None or base is None else max(0, peak - base)
        out.append({"file": Path(tflite).name, "model": info["model"], "variant": info["variant"],
                    "role": info["role"], "sha256": info["sha256"], "bytes": os.path.getsize(tflite),
                    "latency": latency, "peak_rss_bytes": cost,
                    "peak_rss_mib": None if cost is None else round(cost / MIB, 2), "arena_bytes": None,
                    "delegate_nodes": info["delegate_nodes"]})
        if benchmark_model:
            out[-1]["op_profile"] = op_profile(benchmark_model, tflite, threads, end - time.monotonic())
    info = timed["runtime"][0]
    return {"schema": BENCH_SCHEMA, "files": out, "rounds": timed["rounds"], "spec": spec.to_json(),
            "threads": threads, "kernels": kernels,
            "inputs": "images" if images is not None and len(images) else "uniform over the input range",
            "baseline_rss_mib": None if base is None else round(base / MIB, 2),
            "runtime": {k: info[k] for k in ("runtime", "runtime_version", "machine", "platform",
                                             "cpu_count")}}


def local_files(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(tflite, manifest) of each path, checked: a clear error names a missing file or manifest."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"no model at {path}: pass .tflite files written by `faceprobe export`")
        load_manifest(manifest_path_for(path))
        out.append((path, manifest_path_for(path)))
    return out


def table(results: dict[str, dict]) -> str:
    """Bench results side by side (machine name -> result): per file and batch size its latency, size,
    memory and speed against the first file timed with it, with benchmark_model's op types if measured."""
    lines = []
    for where, result in results.items():
        rt = result["runtime"]
        lines.append(f"{where}: {rt['runtime']} {rt['runtime_version']} on {rt['machine']}, "
                     f"{result['kernels']} kernels, threads {result['threads'] or 'default'}, "
                     f"{result['rounds']} rounds interleaved, inputs {result['inputs']}")
        lines.append(f"  {'file':<34}{'batch':>6}{'min ms':>9}{'median':>9}{'p90':>9}{'MB':>8}{'RSS MiB':>9}"
                     f"{'x first':>9}")
        first = result["files"][0]["latency"]
        for f in result["files"]:
            rss = "-" if f["peak_rss_mib"] is None else f"{f['peak_rss_mib']:.1f}"
            for batch, s in f["latency"].items():
                lines.append(f"  {f['file'][:33]:<34}{batch:>6}{s['min_ms']:>9.3f}{s['median_ms']:>9.3f}"
                             f"{s['p90_ms']:>9.3f}{f['bytes'] / 1e6:>8.2f}{rss:>9}"
                             f"{first[batch]['min_ms'] / s['min_ms']:>9.2f}")
            for op, p in sorted(f.get("op_profile", {}).items(), key=lambda kv: -kv[1]["share"]):
                lines.append(f"      {op:<28}{p['count']:>5} nodes {p['avg_ms']:>9.3f} ms "
                             f"{100 * p['share']:>6.1f} %")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- benchmark_model

_NODE_TYPE = re.compile(r"^\s*([A-Za-z0-9_:]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)\s+(\d+)")


def parse_op_profile(text: str) -> dict[str, dict[str, float]]:
    """The "Summary by node type" table of ``benchmark_model --enable_op_profiling=true``: per op type
    its node count, average milliseconds and share of the run."""
    _, found, rest = text.partition("Summary by node type")
    if not found:
        raise ValueError("benchmark_model printed no 'Summary by node type' table; is "
                         "--enable_op_profiling=true supported by this build?")
    ops: dict[str, dict[str, float]] = {}
    for line in rest.splitlines()[1:]:
        if line.strip().startswith("Timings") or line.startswith("="):
            break
        m = _NODE_TYPE.match(line)
        if m:
            ops[m.group(1)] = {"count": int(m.group(2)), "avg_ms": float(m.group(3)),
                               "share": float(m.group(4)) / 100.0}
    if not ops:
        raise ValueError("benchmark_model's node type table is empty or in an unknown format")
    return ops


def op_profile(binary: str, tflite: str, threads: int | None, timeout_s: float
               ) -> dict[str, dict[str, float]]:
    """Run TFLite's ``benchmark_model`` on a file with op profiling and parse its per-op-type table."""
    args = [binary, f"--graph={tflite}", "--enable_op_profiling=true", "--num_runs=50",
            f"--num_threads={threads or -1}"]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=max(1.0, timeout_s), check=False)
    except subprocess.TimeoutExpired:
        raise sandbox.SandboxError("timeout", "benchmark_model took longer than the bench's limit") from None
    if done.returncode != 0:
        raise ValueError(f"benchmark_model failed (exit {done.returncode}): "
                         f"{sandbox.public_message(done.stderr or done.stdout)}")
    return parse_op_profile(done.stdout + done.stderr)
