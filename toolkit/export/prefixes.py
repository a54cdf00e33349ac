"""Prefix files: the model cut after each stage's last tap and converted by the same recipe, so that a
board can time what each stage adds to the latency (where TFLite's ``benchmark_model`` is not at hand)
and "keep block X in float" gets a price per stage.

A prefix ends in its stage's last tap (a probe-role file with one tap output); its conversion differs
from the deploy file's only at the cut, where the tap's activation is not fused.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from device.manifest import manifest_path_for

from .. import atomic
from ..data.normalize import normalize
from ..zoo import list_taps, stage_taps, tap_key, tap_layer_name
from .convert import convert, export_saved_model, keep_float_denylist
from .exporter import build_manifest, calibration_faces
from .provenance import source_entry
from .recipe import Recipe


def prefix_name(variant: str, stage: str) -> str:
    return f"model.{variant}.prefix-{stage}.tflite"


def export_prefixes(model: keras.Model, meta: dict, recipe: Recipe, out_dir: str | os.PathLike,
                    calibration: np.ndarray | str | os.PathLike | None = None,
                    source: Path | None = None) -> dict[str, Path]:
    """{stage: prefix .tflite (manifest beside it)} in depth order, converted by ``recipe`` (calibrated on
    ``calibration``, uint8 faces or a folder, as ``export_keras`` takes it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = int(model.input_shape[1])
    sample = calibration_faces(recipe, size, calibration, {}) if recipe.calibrated else None
    images = None if sample is None else normalize(sample, meta["normalization"])
    origin = source_entry(model, source)
    files = {}
    for stage, tap in stage_taps(model).items():
        cut = keras.Model(model.input, {tap_key(tap.name): model.get_layer(tap_layer_name(tap.name)).output},
                          name=f"{model.name}_to_{stage}")
        present = {t.name for t in list_taps(cut)}
        kept = [t for t in recipe.keep_float if t in present] if recipe.variant == "int8" else []
        with tempfile.TemporaryDirectory(prefix=".prefix-", dir=out) as tmp:
            content, options = convert(export_saved_model(cut, Path(tmp) / "saved"), recipe, images,
                                       keep_float_denylist(cut, kept))
        path = out / prefix_name(recipe.variant, stage)
        atomic.write_bytes(path, content)
        atomic.write_json(manifest_path_for(path),
                          build_manifest(model, meta, recipe, "probe", path, content, options, origin))
        files[stage] = path
    return files
