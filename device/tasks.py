"""What a job does: run a probe plan on a model (ascent, tap activations, or the embeddings of its images),
or time models (bench, ``device.bench``), and pack the result.

Results travel as one ``.npz``: the arrays plus ``summary_json`` (a JSON document as uint8 bytes) that
says which kind of result it is and carries its meta (runtime, kernels, machine, plan).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import sandbox
from .activations import tap_activations
from .archive import PlanArchive, PlanLimits, PlanTooLarge, read_plan
from .ascent import DEFAULT_MAX_BATCH, validate_board_plan
from .ascent import run_plan as run_ascent
from .bench import BenchLimits, BenchPlan, Sandboxing, run_bench
from .files import npz_bytes, write_atomic
from .flatbuffer import validate_structure
from .manifest import tap_entries
from .plan import ProbePlan, ProbeResult
from .runtime import Runtime
from .sandbox import vm_bytes
from .store import ModelStore
from .subspace import subspace_dims

_SUMMARY = "summary_json"
_PREFIX = "tap/"


def validate_plan(plan: ProbePlan, kind: str, manifest: dict) -> None:
    """Raise ValueError when ``plan`` cannot run as ``kind`` on the model ``manifest`` describes.

    ``embeddings`` reads only the plan's images (any model with an embedding output: the deploy file)."""
    if kind == "embeddings":
        want = tuple(int(s) for s in manifest["input"]["shape"][1:])
        if plan.images.ndim != 4 or plan.images.shape[0] == 0 or plan.image_shape != want:
            raise ValueError(f"images must be (n, {', '.join(map(str, want))}) normalised float images, "
                             f"got shape {plan.images.shape}")
        if not any(o["kind"] == "embedding" for o in manifest["outputs"]):
            raise ValueError("this model has no embedding output")
        return
    plan.validate(tap_entries(manifest), tuple(manifest["input"]["shape"][1:]))
    if kind == "ascent":
        validate_board_plan(plan)


def run(runtime: Runtime, plan: ProbePlan, kind: str, max_batch: int = DEFAULT_MAX_BATCH,
        reference: Runtime | None = None) -> ProbeResult | dict[str, Any]:
    """Run one job in-process: a ProbeResult for ``ascent``, an activations dict for ``activations``
    (``reference``: the second file a disagreement plan compares with)."""
    validate_plan(plan, kind, runtime.manifest)
    if kind == "ascent":
        return run_ascent(runtime, plan, max_batch=max_batch, reference=reference)
    meta = {"kind": kind, "runtime": runtime.info(), "plan": plan.to_json()}
    if kind == "embeddings":
        embedding = np.concatenate([runtime.run(plan.images[i:i + max_batch])[runtime.embedding_key]
                                    for i in range(0, len(plan.images), max_batch)])
        return {"values": {}, "embedding": embedding, "stats": {}, "meta": meta}
    acts = tap_activations(runtime, plan.images, taps=plan.taps, batch_size=max_batch)
    return {"values": acts.values, "embedding": acts.embedding, "stats": acts.stats, "meta": meta}


def _npz(arrays: dict[str, np.ndarray], summary: dict) -> bytes:
    return npz_bytes({**arrays, _SUMMARY: np.frombuffer(json.dumps(summary).encode(), np.uint8)})


def _activation_arrays(result: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {_PREFIX + tap: v for tap, v in result["values"].items()}
    if result["embedding"] is not None:
        arrays["embedding"] = result["embedding"]
    return arrays


def encode(result: ProbeResult | dict[str, Any]) -> bytes:
    """One self-describing .npz for a job result."""
    if isinstance(result, ProbeResult):
        names = ("objective", "final_images", "step_norms", "gradients", "ranges", "captured_share")
        arrays = {k: getattr(result, k) for k in names if getattr(result, k) is not None}
        return _npz(arrays, {"kind": "ascent", **result.summary()})
    return _npz(_activation_arrays(result),
                {"kind": result["meta"]["kind"], "stats": result["stats"], "meta": result["meta"]})


def decode(data: bytes) -> ProbeResult | dict[str, Any]:
    """Inverse of ``encode``."""
    try:
        with np.load(io.BytesIO(data)) as z:
            arrays = {k: z[k] for k in z.files}
        summary = json.loads(arrays.pop(_SUMMARY).tobytes())
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"not a faceprobe job result ({exc})") from exc
    if summary["kind"] == "ascent":
        return ProbeResult(meta=summary["meta"], **arrays)
    return {"values": {k[len(_PREFIX):]: v for k, v in arrays.items() if k.startswith(_PREFIX)},
            "embedding": arrays.get("embedding"), "stats": summary["stats"], "meta": summary["meta"]}


def save(result: ProbeResult | dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write a result into ``out_dir``: result.npz + result.json (ascent) or activations.npz + .json."""
    out = Path(out_dir)
    if isinstance(result, ProbeResult):
        return result.save(out)
    write_atomic(out / "activations.npz", npz_bytes(_activation_arrays(result)))
    write_atomic(out / "activations.json", (json.dumps({"stats": result["stats"], "meta": result["meta"]},
                                                       indent=2) + "\n").encode())
    return out


@dataclass(frozen=True)
class JobLimits:
    """Memory and time allowed to a model's check at upload and to each job (see ``device.sandbox``)."""

    model_memory_bytes: int = 1 << 30  # what loading and one invocation may add
    model_timeout_s: float = 60.0
    job_memory_bytes: int = 256 << 20  # what a job may add to the model's own need
    job_timeout_s: float = 1800.0


def _limits_share(limits: JobLimits) -> tuple[int, int]:
    """(bytes for interpreter batches, bytes for the plan's own arrays) within a job's allowance."""
    return limits.job_memory_bytes // 4, limits.job_memory_bytes // 2


def measure_model(tflite: str, manifest_path: str, threads: int | None, kernels: str) -> dict:
    """Load a model, run it once at batch 1 and once at batch 2, and say what that cost (in a sandbox child).

    memory_bytes: address space the interpreter holds after a batch of 1; per_image_bytes: what one more
    image in a batch adds (at least its outputs). Sizes, not peaks: a forked child inherits the fork
    server's peak, so a peak would hide what the model added.
    """
    start, base = time.perf_counter(), vm_bytes()
    runtime = Runtime(tflite, manifest_path, threads=threads, kernels=kernels)
    runtime.run(np.zeros((1, *runtime.input_shape), np.float32))
    size1 = vm_bytes()
    out = runtime.run(np.zeros((2, *runtime.input_shape), np.float32))
    size2 = vm_bytes()
    outputs = sum(v[0].nbytes for v in out.values()) + 4 * int(np.prod(runtime.input_shape))
    if base is None or size1 is None or size2 is None:
        memory, per_image = 0, 4 * outputs
    else:
        memory, per_image = size1 - base, max(size2 - size1, 4 * outputs)
    return {"memory_bytes": int(memory), "per_image_bytes": int(per_image),
            "seconds": round(time.perf_counter() - start, 4)}


def job_batch(needs: dict, limits: JobLimits) -> int:
    """The largest interpreter batch whose growth fits the batch share of a job's allowance."""
    return int(max(1, min(DEFAULT_MAX_BATCH, _limits_share(limits)[0] // max(1, needs["per_image_bytes"]))))


def plan_memory(kind: str, manifest: dict, plan: dict, image_count: int, image_shape: tuple[int, ...],
                batch: int) -> int:
    """Bytes a job's own arrays reach at most (outside the interpreter), from the plan's headers alone."""
    pixels = int(np.prod(image_shape))
    if kind == "embeddings":  # the images, one batch and its quantised copy; embeddings are small beside them
        return 4 * (image_count + 2 * batch) * pixels
    if kind == "activations":
        taps = tap_entries(manifest)
        names = {str(t.get("tap")) for t in plan["targets"]} & set(taps)
        elems = sum(int(np.prod([d or 1 for d in taps[n]["shape"]])) for n in names)
        return 4 * (4 * image_count * elems + 2 * batch * pixels)
    pairs = image_count * max(1, len(plan["targets"]))  # a disagreement plan: one ascent per image
    k = subspace_dims(plan.get("subspace", {"kind": "full"}), image_shape)
    unit = (plan.get("subspace", {}).get("kind") == "window"
            and plan.get("objective", {}).get("kind") == "unit")
    bases = len({str(t.get("tap")) for t in plan["targets"]}) if unit else 1
    steps = int(plan.get("steps", 20))
    # Current and final images with the step's group stack; bases with a step's float64 rotation and
    # float32 directions; the padded batch and its quantised copy; per-step records.
    need = 4 * pixels * (4 * pairs + 4 * bases * k + 2 * batch) + 8 * pairs * (steps + 1) * (k + 4)
    if plan.get("objective", {}).get("kind") == "disagreement":
        # The best images, a step's random-control tries (one chunk of them at a time) in float64.
        need += 4 * pixels * pairs + 8 * pixels * min(int(plan["objective"].get("control", 100)), 2 * batch)
    return need


def disagreement_reference(plan: dict) -> str | None:
    """The model id a disagreement plan compares with (None for any other plan)."""
    objective = plan.get("objective", {})
    return objective.get("reference") if objective.get("kind") == "disagreement" else None


def run_job(tflite: str, manifest_path: str, plan_path: str, kind: str, result_path: str,
            threads: int | None, kernels: str, max_batch: int, reference: tuple[str, str] | None = None
            ) -> None:
    """A job, start to finish, in a sandbox child: the result goes straight to ``result_path``
    (``reference``: the second file's .tflite and manifest, for a disagreement plan)."""
    runtime = Runtime(tflite, manifest_path, threads=threads, kernels=kernels)
    second = Runtime(*reference, threads=threads, kernels=kernels) if reference else None
    result = run(runtime, read_plan(plan_path), kind, max_batch, reference=second)
    write_atomic(result_path, encode(result))


class Task:
    """Checks plans against held models and runs jobs on them, each in a sandbox child."""

    def __init__(self, store: ModelStore, threads: int | None = None, kernels: str = "xnnpack",
                 limits: JobLimits | None = None, plan_limits: PlanLimits | None = None,
                 bench_limits: BenchLimits | None = None, benchmark_model: str | None = None):
        self.store, self.threads, self.kernels = store, threads, kernels
        self.limits, self.plan_limits = limits or JobLimits(), plan_limits or PlanLimits()
        self.bench_limits, self.benchmark_model = bench_limits or BenchLimits(), benchmark_model

    def validate_model(self, tflite: Path, manifest: Path) -> dict:
        """Check an uploaded model's structure here, then load and run it once in a sandbox; returns its
        measured needs, or raises ValueError saying why it is refused."""
        with open(tflite, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            validate_structure(data, self.limits.model_memory_bytes)
        try:
            return sandbox.run(measure_model, (str(tflite), str(manifest), self.threads, self.kernels),
                               self.limits.model_memory_bytes, self.limits.model_timeout_s)
        except sandbox.SandboxError as exc:
            raise ValueError(f"the model does not run here: {exc.message}") from None

    def check(self, model_id: str, kind: str, archive: PlanArchive) -> ProbePlan | BenchPlan:
        """Bound a plan by its headers (PlanTooLarge), then decode it once and check it fits the model."""
        if kind == "bench":
            return self._check_bench(model_id, archive)
        manifest, needs = self.store.manifest(model_id), self.store.needs(model_id)
        reference = disagreement_reference(archive.json) if kind == "ascent" else None
        if reference is not None:
            self._check_reference(reference, manifest)
            needs = self._joint_needs(model_id, reference)
        elif kind == "ascent" and archive.json.get("objective", {}).get("kind") == "disagreement":
            raise ValueError("a disagreement plan needs objective.reference: the id of the held file it "
                             "compares with (push the float file first)")
        batch = job_batch(needs, self.limits)
        need = plan_memory(kind, manifest, archive.json, archive.image_count, archive.image_shape, batch)
        share = _limits_share(self.limits)[1]
        if need > share:
            raise PlanTooLarge(f"the plan needs about {need >> 20} MiB on top of the model; this agent "
                               f"allows {share >> 20} MiB per job: use fewer images, targets or subspace "
                               "dimensions")
        plan = archive.plan()
        validate_plan(plan, kind, manifest)
        return plan

    def _check_reference(self, reference: object, manifest: dict) -> None:
        if not isinstance(reference, str) or not self.store.has(reference):
            raise ValueError(f"objective.reference {str(reference)[:16]!r} is not a model held by this "
                             "agent; push the float file first")
        theirs = self.store.manifest(reference)["input"]["shape"][1:]
        if list(theirs) != list(manifest["input"]["shape"][1:]):
            raise ValueError(f"objective.reference takes input {theirs}, the probed model "
                             f"{manifest['input']['shape'][1:]}")

    def _joint_needs(self, model_id: str, reference: str | None) -> dict:
        """What a job on ``model_id`` needs, with the reference file loaded beside it."""
        needs = self.store.needs(model_id)
        if reference is None:
            return needs
        other = self.store.needs(reference)
        return {"memory_bytes": needs["memory_bytes"] + other["memory_bytes"],
                "per_image_bytes": needs["per_image_bytes"] + other["per_image_bytes"]}

    def _check_bench(self, model_id: str, archive: PlanArchive) -> BenchPlan:
        if "bench" not in archive.json:
            raise ValueError("a bench job's plan needs a 'bench' section (see device.bench.BenchPlan)")
        plan = BenchPlan.from_archive(archive)
        ids = [model_id, *(m for m in plan.models if m != model_id)]
        plan.spec.check(self.bench_limits, len(ids))
        missing = [m[:16] for m in ids if not self.store.has(m)]
        if missing:
            raise ValueError(f"bench models not held by this agent: {', '.join(missing)}; push them first")
        growth = max(plan.spec.batch_sizes) * sum(self.store.needs(m)["per_image_bytes"] for m in ids)
        share = _limits_share(self.limits)[0]
        if growth > share:
            raise PlanTooLarge(f"batch {max(plan.spec.batch_sizes)} of these models needs about "
                               f"{growth >> 20} MiB; this agent allows {share >> 20} MiB of batches per job")
        shapes = {tuple(self.store.manifest(m)["input"]["shape"][1:]) for m in ids}
        if len(shapes) > 1 or (len(plan.images) and {archive.image_shape} != shapes):
            raise ValueError(f"bench models and images must share one input shape, got {sorted(shapes)} "
                             f"and images {archive.image_shape}")
        return BenchPlan(plan.spec, plan.images, ids[1:])

    def bench(self, model_ids: list[str], plan: BenchPlan, cancel: threading.Event | None = None) -> dict:
        """A checked bench job on held models, each piece in a sandbox child (see ``device.bench``)."""
        files = [self.store.paths(m) for m in model_ids]
        memory = [self.store.needs(m)["memory_bytes"] + self.limits.job_memory_bytes for m in model_ids]
        return run_bench(files, plan.spec, self.threads, self.kernels, plan.images,
                         Sandboxing(memory, self.limits.job_timeout_s, cancel), self.benchmark_model)

    def execute(self, model_id: str, kind: str, plan_path: Path, result_path: Path,
                cancel: threading.Event | None = None) -> None:
        """Run a checked plan (saved at ``plan_path``) in a sandbox; SandboxError when it fails."""
        if kind == "bench":
            plan = BenchPlan.from_bytes(plan_path)
            stats = self.bench([model_id, *plan.models], plan, cancel)
            write_atomic(result_path, encode({"values": {}, "embedding": None, "stats": stats,
                                              "meta": {"kind": "bench", "spec": plan.spec.to_json()}}))
            return
        tflite, manifest = self.store.paths(model_id)
        reference = None
        if kind == "ascent":
            with PlanArchive(plan_path) as archive:  # the header alone: the plan was checked at submission
                reference = disagreement_reference(archive.json)
            if reference is not None and not self.store.has(reference):
                raise ValueError(f"the reference model {reference[:12]}… was deleted before the job ran")
        needs = self._joint_needs(model_id, reference)
        second = tuple(str(p) for p in self.store.paths(reference)) if reference else None
        args = (str(tflite), str(manifest), str(plan_path), kind, str(result_path), self.threads,
                self.kernels, job_batch(needs, self.limits), second)
        sandbox.run(run_job, args, needs["memory_bytes"] + self.limits.job_memory_bytes,
                    self.limits.job_timeout_s, cancel)

