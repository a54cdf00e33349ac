"""What a job does: run a probe plan on a model (ascent, tap activations, or the embeddings of its images)
and pack the result.

Results travel as one ``.npz``: the arrays plus ``summary_json`` (a JSON document as uint8 bytes) that
says which kind of result it is and carries its meta (runtime, kernels, machine, plan).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .activations import tap_activations
from .ascent import DEFAULT_MAX_BATCH, check_board_plan
from .ascent import run_plan as run_ascent
from .files import npz_bytes, write_atomic
from .manifest import tap_entries
from .plan import ProbePlan, ProbeResult
from .runtime import Runtime
from .store import ModelStore

_SUMMARY = "summary_json"
_PREFIX = "tap/"


def check_plan(plan: ProbePlan, kind: str, manifest: dict) -> None:
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
        check_board_plan(plan)


def run(runtime: Runtime, plan: ProbePlan, kind: str, max_batch: int = DEFAULT_MAX_BATCH
        ) -> ProbeResult | dict[str, Any]:
    """Run one job in-process: a ProbeResult for ``ascent``, an activations dict for ``activations``."""
    check_plan(plan, kind, runtime.manifest)
    if kind == "ascent":
        return run_ascent(runtime, plan, max_batch=max_batch)
    meta = {"kind": kind, "runtime": runtime.info(), "plan": plan.to_json()}
    if kind == "embeddings":
        return {"values": {}, "embedding": runtime.run(plan.images)["embedding"], "stats": {}, "meta": meta}
    acts = tap_activations(runtime, plan.images, taps=plan.taps)
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


class Task:
    """Runs jobs against models in a store, one Runtime per model (kept by the model's worker)."""

    def __init__(self, store: ModelStore, threads: int | None = None, kernels: str = "xnnpack",
                 max_batch: int = DEFAULT_MAX_BATCH):
        self.store, self.threads, self.kernels, self.max_batch = store, threads, kernels, max_batch

    def check(self, model_id: str, kind: str, plan_bytes: bytes) -> ProbePlan:
        plan = ProbePlan.from_bytes(plan_bytes)
        check_plan(plan, kind, self.store.manifest(model_id))
        return plan

    def execute(self, model_id: str, kind: str, plan_bytes: bytes, cache: dict) -> bytes:
        if "runtime" not in cache:
            tflite, manifest = self.store.paths(model_id)
            cache["runtime"] = Runtime(tflite, manifest, threads=self.threads, kernels=self.kernels)
        plan = ProbePlan.from_bytes(plan_bytes)
        return encode(run(cache["runtime"], plan, kind, self.max_batch))
