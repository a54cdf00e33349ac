"""Decode any image file OpenCV reads, with Pillow for the formats it cannot (GIF, some PGM variants)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# Decode failures are reported per file by the caller; OpenCV's own log lines would only repeat them.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class UnreadableImage(ValueError):
    """A file that is not a complete, decodable image."""


def _jpeg_truncated(data: bytes) -> bool:
    # Older OpenCV builds decode a truncated JPEG into a grey-padded image instead of failing. A complete
    # file has an end-of-image marker after its last start-of-scan (markers cannot occur inside the
    # byte-stuffed scan data), which a cut-off file lacks.
    return data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes → uint8 (H, W, 3) RGB; grey becomes three equal channels, alpha is dropped."""
    if not data:
        raise UnreadableImage("empty file")
    if _jpeg_truncated(data):
        raise UnreadableImage("truncated JPEG (no end-of-image marker)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # Pillow refuses truncated data here rather than padding it
            return np.asarray(img.convert("RGB"), np.uint8).copy()
    except UnidentifiedImageError:
        raise UnreadableImage("not a decodable image (neither OpenCV nor Pillow knows its format)") from None
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not an image we can use"
        raise UnreadableImage(f"not a decodable image ({type(exc).__name__}: {exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read and decode one image file → uint8 (H, W, 3) RGB; raises UnreadableImage or OSError."""
    return decode_image(Path(path).read_bytes())
