"""Writing a probe run to a directory: plan, result, feature maps, findings, figures and the HTML page."""

from __future__ import annotations

import io
import os
from pathlib import Path

import keras
import numpy as np

from device.plan import ProbePlan, ProbeResult

from ..atomic import write_bytes, write_json
from .findings import stage_statistics
from .reference import Reference, as_reference


def feature_maps(model: keras.Model | Reference, plan: ProbePlan, result: ProbeResult
                 ) -> dict[str, np.ndarray]:
    """``start_j`` / ``final_j``: target j's channel map on the start images and on its ascent results."""
    ref = as_reference(model)
    out = {}
    for tap in plan.taps:
        idx = [j for j, t in enumerate(plan.targets) if t["tap"] == tap]
        start = ref.tap_values(plan.images, [tap])[tap]
        final = ref.tap_values(result.final_images[:, idx].reshape(-1, *plan.image_shape), [tap])[tap]
        final = final.reshape(len(plan.images), len(idx), *final.shape[1:])
        for jj, j in enumerate(idx):
            c = plan.targets[j]["channel"]
            out[f"start_{j}"] = start[..., c]
            out[f"final_{j}"] = final[:, jj, ..., c]
    return out


def write_outputs(model: keras.Model | Reference, plan: ProbePlan, result: ProbeResult,
                  out_dir: str | os.PathLike, **findings_extra) -> dict:
    """Save everything a report needs into ``out_dir`` and render it; returns the findings dict (``model``:
    the Keras model, or a float TFLite reference)."""
    from ..report.page import render

    out = Path(out_dir)
    plan.save(out / "plan.json")
    result.save(out / "result")
    buf = io.BytesIO()
    np.savez_compressed(buf, **feature_maps(model, plan, result))
    write_bytes(out / "feature_maps.npz", buf.getvalue())
    ref = as_reference(model)
    stages = {t.name: t.stage for t in ref.taps}
    name = ref.model.name if ref.model is not None else getattr(ref, "name", "tflite")
    findings = {"model": name, "tap_stages": {t: stages[t] for t in plan.taps},
                "stages": stage_statistics(plan, result, stages), **findings_extra}
    write_json(out / "findings.json", findings)
    findings["report"] = str(render(out))
    return findings
