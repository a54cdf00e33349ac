"""Suggest and try a fix: re-export with the localised block kept in float, or, when ascended images
saturate the int8 ranges, with those images added to the calibration set; then re-check and price it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from device.manifest import load_manifest, manifest_path_for

from ..data import denormalize
from ..export import export_model
from .boards import LocalBoard
from .gate import judge
from .levels import identity_level, rescore, tap_level, tap_scales


def suggest_fix(model_path: str | os.PathLike, model, meta: dict, host: dict, variant_files: dict,
                data, calib_faces: np.ndarray, thresholds: dict, reference: dict | None, out: Path,
                seed: int = 0) -> dict:
    """Apply the fix the host board's results point to, re-run the check's tap and identity levels on the
    new export (``data``: the check's ``CheckData``), and report whether it passes and what it costs in
    size and batch-1 latency."""
    from .runner import deploy_embeddings, latency_ms, measured_checks

    variant = load_manifest(manifest_path_for(variant_files["deploy"]))["variant"]
    saturated = any(v["name"] == "feature_max_saturation" and not v["passed"] for v in host["verdicts"])
    keep_float: list[str] = []
    calibration = calib_faces
    if saturated and reference is not None:
        action = "calibrate_with_ascended_images"
        ascended = reference["full"].final_images.reshape(-1, *reference["plan"].image_shape)
        calibration = np.concatenate([calib_faces, denormalize(ascended, meta["normalization"])])
        tap = None
        why = ("ascended images drive taps to the int8 limits: add them to the calibration set so the "
               "ranges cover what the features respond to")
    else:
        action = "keep_float"
        tap = host["localisation"]["first_broken_tap"] or host["localisation"]["worst_tap"]
        keep_float = [tap]
        why = f"{tap} is where the error enters: keep its block in float"
    exported = export_model(model_path, out / "export", variants=(variant,), calibration=calibration,
                            keep_float=keep_float, seed=seed)[variant]
    board = LocalBoard(exported["probe"])
    scales = tap_scales(load_manifest(manifest_path_for(exported["probe"])))
    taps = tap_level(model, board, data.images[data.sample], scales)
    ident = identity_level(data.float_embeddings, deploy_embeddings(exported["deploy"], data.images),
                           data.faces.labels, data.pairs)
    measured = measured_checks(taps, None, ident)
    if action == "calibrate_with_ascended_images":
        sat = rescore(model, board, reference["full_plan"], reference["full"])["saturation"]
        measured["feature_max_saturation"] = max(v["ascended"] for v in sat.values()
                                                 if v["ascended"] is not None)
    verdicts = judge(measured, thresholds)
    shape = tuple(meta["input_shape"])
    before = {"deploy_bytes": Path(variant_files["deploy"]).stat().st_size,
              "deploy_b1_ms": latency_ms(Path(variant_files["deploy"]), shape)}
    after = {"deploy_bytes": Path(exported["deploy"]).stat().st_size,
             "deploy_b1_ms": latency_ms(Path(exported["deploy"]), shape)}
    passed = all(v.passed for v in verdicts)
    return {
        "summary": {"action": action, "tap": tap, "passed_after": passed,
                    "quantized_accuracy_after": ident["quantized"]["verification_accuracy"],
                    "size_ratio": after["deploy_bytes"] / before["deploy_bytes"],
                    "latency_ratio": after["deploy_b1_ms"] / before["deploy_b1_ms"]},
        "why": why,
        "keep_float": keep_float,
        "files": {r: str(p) for r, p in exported.items()},
        "verdicts": [v.to_dict() for v in verdicts],
        "taps": taps,
        "identities": {k: v for k, v in ident.items() if k != "embedding_cosine"},
        "before": before,
        "after": after,
    }
