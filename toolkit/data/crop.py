"""Face cropping (OpenCV's bundled Haar cascade) and square resizing."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

# Haar boxes hug brows to mouth; widening them keeps the forehead, chin and cheeks a face model expects.
FACE_MARGIN = 0.25


@lru_cache(maxsize=1)
def face_detector():
    """OpenCV's bundled frontal-face Haar cascade; FileNotFoundError saying what to install when absent."""
    # OpenCV 5 moved the cascade classifier and its data out of the main package.
    if not hasattr(cv2, "CascadeClassifier"):
        raise FileNotFoundError(f"face cropping needs OpenCV's Haar cascade, which OpenCV {cv2.__version__} "
                                "does not ship; install opencv-python-headless<5, or load without cropping")
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise FileNotFoundError(f"OpenCV's face cascade {path} is missing or unreadable; "
                                "reinstall opencv-python-headless")
    return cascade


def detect_face(rgb: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest frontal face as (x, y, w, h), or None."""
    # No global histogram equalisation: on a photo with a large even background it flattens the face's
    # contrast and the cascade misses it (measured on ORL faces pasted on a dark canvas).
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    min_side = max(20, min(grey.shape) // 8)
    faces = face_detector().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                             minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return int(x), int(y), int(w), int(h)


def square_crop(rgb: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """A side x side crop centred on (cx, cy); parts outside the image repeat its border."""
    half = side / 2.0
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    s = max(1, int(round(side)))
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return rgb[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]


def centre_crop(rgb: np.ndarray) -> np.ndarray:
    """The largest centred square."""
    h, w = rgb.shape[:2]
    return square_crop(rgb, w / 2.0, h / 2.0, min(h, w))


def crop_face(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """Square crop around the largest detected face (with margin); (crop, found). No face → centre crop."""
    box = detect_face(rgb)
    if box is None:
        return centre_crop(rgb), False
    x, y, w, h = box
    return square_crop(rgb, x + w / 2.0, y + h / 2.0, max(w, h) * (1 + 2 * FACE_MARGIN)), True


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size (area filter when shrinking, bilinear when enlarging)."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)
