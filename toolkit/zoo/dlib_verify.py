"""The port's descriptors beside dlib's own, on the same 150x150 chips."""

from __future__ import annotations

import numpy as np

from ..data.normalize import normalize


def dlib_recognizer():
    """dlib's face recognition network on the installed weights, or None when dlib is not installed."""
    try:
        import dlib
    except ImportError:
        return None
    from .dlib_resnet import weights_path

    return dlib.face_recognition_model_v1(str(weights_path()))


def dlib_descriptors(chips: np.ndarray, recognizer=None) -> np.ndarray:
    """dlib's 128-d descriptors of uint8 (N, 150, 150, 3) RGB chips."""
    rec = recognizer or dlib_recognizer()
    if rec is None:
        raise FileNotFoundError("dlib is not installed: pip install dlib-bin")
    return np.array([np.asarray(rec.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips],
                    np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def port_descriptors(model, chips: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The port's raw (not normalised) descriptors of uint8 chips."""
    out = [np.asarray(model(normalize(chips[i:i + batch_size]), training=False), np.float64)
           for i in range(0, len(chips), batch_size)]
    return np.concatenate(out)


def check_against_dlib(model, n: int = 4, seed: int = 0) -> dict | None:
    """Cosine of the port's and dlib's descriptors on ``n`` random-texture 150x150 images (the network is a
    function of any image; no face data ships with the package). None when dlib is not installed."""
    rec = dlib_recognizer()
    if rec is None:
        return None
    rng = np.random.default_rng(seed)
    size = int(model.input_shape[1])
    # Smooth random images: a coarse random grid upsampled, so every layer sees structured input.
    coarse = rng.integers(0, 256, (n, 10, 10, 3)).astype(np.float32)
    chips = np.clip(np.kron(coarse, np.ones((1, size // 10, size // 10, 1))), 0, 255).astype(np.uint8)
    c = cosines(port_descriptors(model, chips), dlib_descriptors(chips, rec))
    return {"images": n, "min_cosine": float(c.min())}
