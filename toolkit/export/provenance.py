"""Which trained model an exported file came from: the manifest's ``source`` and the check that a
quantized file belongs to the model it is judged against."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import keras
import numpy as np

from device.manifest import sha256_file


class ProvenanceError(ValueError):
    """A quantized file exported from another model than the one it is checked against."""


def weights_sha256(model: keras.Model) -> str:
    """sha256 over every weight's path, shape, dtype and values, in the model's order: the same for a
    model saved twice (a .keras file's own bytes change with its zip timestamps)."""
    digest = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        digest.update(f"{w.path}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def source_entry(model: keras.Model, path: Path | None) -> dict:
    """The manifest's ``source``: the .keras file (when there is one) and the weights' fingerprint."""
    return {"file": path.name if path else None, "sha256": sha256_file(path) if path else None,
            "weights_sha256": weights_sha256(model)}


def validate_source(manifest: dict, model: keras.Model, model_path: str | os.PathLike, what: str) -> None:
    """Raise ProvenanceError unless ``manifest`` (of the file ``what``) was exported from ``model``."""
    source = manifest.get("source") or {}
    if source.get("weights_sha256"):
        if source["weights_sha256"] == weights_sha256(model):
            return
    elif source.get("sha256") and source["sha256"] == sha256_file(model_path):
        return
    recorded = source.get("file") or "an unrecorded model"
    weights = str(source.get("weights_sha256"))[:12]
    raise ProvenanceError(f"{what} was exported from {recorded} (weights {weights}…), "
                          f"not from {model_path}: a check compares a quantized file with the float model "
                          "it came from. Export MODEL again (`faceprobe export`) or pass the model that "
                          "made this file")
