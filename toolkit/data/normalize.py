"""Pixel normalisation, recorded with every model so each later step reuses it."""

from __future__ import annotations

import numpy as np

# (x - mean) / scale on 0..255 pixels, RGB order.
DEFAULT_NORMALIZATION = {"mean": 127.5, "scale": 128.0, "channel_order": "RGB"}


def normalize(images: np.ndarray, norm: dict | None = None) -> np.ndarray:
    """uint8 (or 0..255 float) images → float32 model input."""
    n = norm or DEFAULT_NORMALIZATION
    x = _ordered(np.asarray(images, np.float32), n)
    return ((x - np.asarray(n["mean"], np.float32)) / np.asarray(n["scale"], np.float32)).astype(np.float32)


def denormalize(x: np.ndarray, norm: dict | None = None) -> np.ndarray:
    """Model input → uint8 pixels (clipped)."""
    n = norm or DEFAULT_NORMALIZATION
    scale, mean = np.asarray(n["scale"], np.float32), np.asarray(n["mean"], np.float32)
    pixels = np.asarray(x, np.float32) * scale + mean
    return _ordered(np.clip(pixels, 0, 255).round().astype(np.uint8), n)


def _ordered(images: np.ndarray, norm: dict) -> np.ndarray:
    """RGB images in the model's channel order (a BGR model, e.g. from OpenCV-era training code, gets its
    channels swapped; the swap is its own inverse)."""
    if norm.get("channel_order", "RGB").upper() == "BGR" and images.shape[-1] == 3:
        return images[..., ::-1]
    return images


def valid_range(norm: dict | None = None) -> tuple[float, float]:
    """The normalised values of pixels 0 and 255."""
    n = norm or DEFAULT_NORMALIZATION
    mean, scale = np.asarray(n["mean"], np.float64), np.asarray(n["scale"], np.float64)
    return float(np.min((0.0 - mean) / scale)), float(np.max((255.0 - mean) / scale))
