"""Pixel normalisation, recorded with every model so each later step reuses it."""

from __future__ import annotations

import numpy as np

# (x - mean) / scale on 0..255 pixels, RGB order.
DEFAULT_NORMALIZATION = {"mean": 127.5, "scale": 128.0, "channel_order": "RGB"}


def normalize(images: np.ndarray, norm: dict | None = None) -> np.ndarray:
    """uint8 (or 0..255 float) images → float32 model input."""
    n = norm or DEFAULT_NORMALIZATION
    return ((np.asarray(images, np.float32) - n["mean"]) / n["scale"]).astype(np.float32)


def denormalize(x: np.ndarray, norm: dict | None = None) -> np.ndarray:
    """Model input → uint8 pixels (clipped)."""
    n = norm or DEFAULT_NORMALIZATION
    return np.clip(np.asarray(x, np.float32) * n["scale"] + n["mean"], 0, 255).round().astype(np.uint8)


def valid_range(norm: dict | None = None) -> tuple[float, float]:
    """The normalised values of pixels 0 and 255."""
    n = norm or DEFAULT_NORMALIZATION
    return (0.0 - n["mean"]) / n["scale"], (255.0 - n["mean"]) / n["scale"]
