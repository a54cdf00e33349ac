"""Saving and loading face models: `model.keras` plus `model.meta.json` (taps, normalisation, origin)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from device.files import read_json

from . import atomic
from .data.normalize import DEFAULT_NORMALIZATION

if TYPE_CHECKING:
    import keras


def meta_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".keras") + ".meta.json")


def save_face_model(model: keras.Model, path: str | os.PathLike, **meta) -> Path:
    """Save atomically, with the tap list and normalisation beside it. Returns the model path."""
    from .zoo import list_taps

    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model path must end in .keras, got {path}")
    with atomic.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    full = {
        "architecture": model.name,
        "input_shape": list(model.input_shape[1:]),
        "embedding_dim": int(model.output_shape[-1]),
        "normalization": DEFAULT_NORMALIZATION,
        "taps": [t.to_dict() for t in list_taps(model)],
        **meta,
    }
    atomic.write_json(meta_path(path), full)
    return path


def validate_model_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a .keras model file; otherwise an error that says what it is and what to pass."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: pass the model.keras written by `faceprobe train`")
    if path.suffix == ".tflite":
        raise ValueError(f"{path} is a TFLite model: this command takes the model.keras written by "
                         "`faceprobe train` (TFLite files go to `check --quantized`, `deploy` and boards)")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras model file (a .keras zip archive); pass the model.keras "
                         "written by `faceprobe train`")
    return path


def load_face_model(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """Load a saved face model and its metadata (defaults when the sidecar is absent)."""
    path = validate_model_file(path)
    import keras  # after the checks: a wrong file is named at once, before TensorFlow loads

    from .zoo import list_taps

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many kinds for a bad archive; its first line says which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a readable Keras model ({first}); re-run `faceprobe train`") from exc
    mp = meta_path(path)
    meta = read_json(mp, "model metadata file") if mp.is_file() else {}
    meta.setdefault("architecture", model.name)
    meta.setdefault("input_shape", list(model.input_shape[1:]))
    meta.setdefault("normalization", DEFAULT_NORMALIZATION)
    meta.setdefault("taps", [t.to_dict() for t in list_taps(model)])
    return model, meta
