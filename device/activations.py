"""Tap activations of a probe model for a batch of images, dequantised, with per-tap statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .runtime import Runtime


@dataclass
class Activations:
    """Tap name -> (n, h, w, c) float32 activations, and tap name -> statistics."""

    values: dict[str, np.ndarray]
    stats: dict[str, dict] = field(default_factory=dict)
    embedding: np.ndarray | None = None


def tap_activations(
    runtime: Runtime,
    images: np.ndarray,
    taps: Sequence[str] | None = None,
    batch_size: int = 32,
) -> Activations:
    """Run ``images`` (normalised float, (n, H, W, C)) through a probe model in batches.

    ``taps`` selects tap names (default: all the model has); unknown names raise KeyError naming the
    valid ones.
    """
    if not runtime.taps:
        raise ValueError(f"{runtime.path.name} has no taps: it is a deploy model; pass the probe model "
                         "(model.<variant>.probe.tflite)")
    names = list(runtime.taps) if taps is None else list(taps)
    unknown = [t for t in names if t not in runtime.taps]
    if unknown:
        raise KeyError(f"unknown tap(s) {', '.join(unknown)}; "
                       f"this model's taps are: {', '.join(runtime.taps)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = np.asarray(images)
    chunks: dict[str, list[np.ndarray]] = {t: [] for t in names}
    embeddings = []
    for start in range(0, max(len(images), 1), batch_size):
        out = runtime.run(images[start:start + batch_size])
        for t in names:
            chunks[t].append(out[runtime.taps[t]["key"]])
        if runtime.embedding_key:
            embeddings.append(out[runtime.embedding_key])
    values = {t: np.concatenate(chunks[t]) for t in names}
    stats = {t: tap_statistics(values[t], runtime.taps[t]) for t in names}
    return Activations(values, stats, np.concatenate(embeddings) if embeddings else None)


def tap_statistics(values: np.ndarray, entry: dict) -> dict:
    """mean, std, min, max, and for int8 taps the fraction of values at the int8 limits."""
    v = np.asarray(values, np.float64)
    stats = {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "negative_fraction": float(np.mean(v < 0)),
        "saturation": None,
    }
    if entry.get("int8"):
        codes = int8_codes(v, entry["int8"])
        stats["saturation_high"] = float(np.mean(codes >= 127))
        # A post-activation tap (a ReLU fused into its conv, in a file converted elsewhere) sits at the
        # low limit wherever the ReLU gave zero: only the high limit is saturation there.
        stats["saturation"] = (stats["saturation_high"] if entry.get("post_activation")
                               else float(np.mean((codes <= -128) | (codes >= 127))))
    return stats


def int8_codes(values: np.ndarray, int8: dict) -> np.ndarray:
    """The int8 codes behind dequantised values (exact: those values are (code - zero_point) * scale)."""
    q = np.round(np.asarray(values, np.float64) / int8["scale"]) + int8["zero_point"]
    return np.clip(q, -128, 127).astype(np.int16)
