"""`faceprobe import FILE.tflite`: a TFLite file converted elsewhere, its normalisation and channel order
recorded once beside it (``FILE.faceprobe.json``, tied to the file by its sha256), with the taps found in
it, so that later commands need no flags."""

from __future__ import annotations

import json
from pathlib import Path

from device.manifest import sha256_file

from .. import atomic
from ..data.normalize import DEFAULT_NORMALIZATION
from .graph import TFLiteGraph

RECORD_SCHEMA = "faceprobe.tflite-import/1"


def record_path(tflite: str | Path) -> Path:
    p = Path(tflite)
    return p.with_name(p.name.removesuffix(".tflite") + ".faceprobe.json")


def normalization_of(mean=None, scale=None, channels: str | None = None, base: dict | None = None) -> dict:
    """(pixel - mean) / scale in ``channels`` order, each given value replacing ``base``'s (default
    faceprobe's 127.5 / 128, RGB)."""
    norm = dict(base or DEFAULT_NORMALIZATION)
    for key, value in (("mean", mean), ("scale", scale)):
        if value:
            values = [float(v) for v in value]
            if any(v <= 0 for v in values) and key == "scale":
                raise ValueError(f"--scale {value}: the scale must be positive")
            norm[key] = values[0] if len(values) == 1 else values
    if channels:
        norm["channel_order"] = channels.upper()
    return norm


def recorded_normalization(tflite: str | Path, mean=None, scale=None, channels: str | None = None) -> dict:
    """The normalisation ``faceprobe import`` recorded for ``tflite`` (if it did, and for these very
    bytes), with the flags given now taking precedence."""
    record = record_path(tflite)
    base = None
    if record.is_file() and Path(tflite).is_file():
        saved = json.loads(record.read_text())
        if saved.get("sha256") != sha256_file(tflite):
            raise ValueError(f"{record} was recorded for another file than {tflite} (sha256 differs): run "
                             f"`faceprobe import {tflite}` again")
        base = saved["normalization"]
    return normalization_of(mean, scale, channels, base)


def import_tflite(path: str | Path, mean=None, scale=None, channels: str | None = None) -> dict:
    """Read ``path``, find its taps, and write its record beside it; returns the record."""
    graph = TFLiteGraph.read(path)
    graph.signature()
    taps = [{"tensor": c.name, "op": c.op, "shape": list(c.shape), "stride": c.stride,
             "receptive_field": c.receptive_field, "post_activation": c.post_activation}
            for c in graph.candidates()]
    record = {"schema": RECORD_SCHEMA, "file": Path(path).name, "sha256": sha256_file(path),
              "variant": graph.variant(), "input_shape": list(graph.input_shape()),
              "normalization": normalization_of(mean, scale, channels), "taps": "found", "candidates": taps}
    atomic.write_json(record_path(path), record)
    return record
