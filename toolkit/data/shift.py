"""Faces off the calibration distribution: seeded corruptions of face images at three severities.

    from toolkit.data.shift import CORRUPTIONS, corrupt, shift_suite
    dim = corrupt(faces.images, "low_light", 3, seed=0)         # uint8 (n, H, W, 3), same shape
    for name, severity, images in shift_suite(faces.images): ...

What a camera on a board sees and calibration faces rarely show: low light (gamma and gain), over-exposure,
contrast loss, Gaussian and sensor (shot + read) noise, defocus and motion blur, JPEG, occlusion (a
sunglasses band, a mask band), small rotation with scale. Each corruption draws its randomness from its own
generator seeded by (seed, corruption, severity), so a corruption is the same whichever others are run,
and sizes scale with the image (a blur radius at 112 pixels is twice that at 56).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np

SEVERITIES = (1, 2, 3)
_REFERENCE_SIZE = 112.0  # sizes below are in pixels of a 112 x 112 face


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _low_light(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    g, k = ((1.5, 0.7), (2.0, 0.5), (2.6, 0.35))[s - 1]  # gamma, then gain
    return _clip(255.0 * k * (x / 255.0) ** g)


def _over_exposure(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return _clip(x * (1.4, 1.8, 2.4)[s - 1] + (10, 25, 40)[s - 1])


def _contrast(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.6, 0.4, 0.25)[s - 1]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _clip(mean + (x - mean) * c)


def _gaussian_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return _clip(x + rng.normal(0.0, (8.0, 16.0, 28.0)[s - 1], x.shape))


def _sensor_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    # Shot noise (Poisson in photons, fewer photons at higher severity) plus read noise, per pixel.
    peak, read = ((60.0, 2.0), (25.0, 4.0), (10.0, 6.0))[s - 1]
    photons = rng.poisson(np.maximum(x, 0) / 255.0 * peak)
    return _clip(photons / peak * 255.0 + rng.normal(0.0, read, x.shape))


def _per_image(x: np.ndarray, fn: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    return np.stack([fn(img, i) for i, img in enumerate(x)])


def _scaled(x: np.ndarray, length: float) -> float:
    return length * x.shape[1] / _REFERENCE_SIZE


def _defocus(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    radius = max(0.75, _scaled(x, (1.5, 2.5, 4.0)[s - 1]))
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    # An antialiased disk: a fractional radius still blurs more than a smaller one.
    kernel = np.clip(radius + 0.5 - np.hypot(yy, xx), 0, 1).astype(np.float32)
    kernel /= kernel.sum()
    return _clip(_per_image(x.astype(np.float32), lambda img, _: cv2.filter2D(img, -1, kernel,
                                                                              borderType=cv2.BORDER_REFLECT)))


def _motion(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    length = max(2, int(round(_scaled(x, (5, 9, 15)[s - 1]))))
    angles = rng.uniform(0, 180, len(x))

    def blur(img: np.ndarray, i: int) -> np.ndarray:
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(angles[i]), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        return cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6), borderType=cv2.BORDER_REFLECT)

    return _clip(_per_image(x.astype(np.float32), blur))


def _jpeg(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    quality = (30, 15, 7)[s - 1]

    def code(img: np.ndarray, _: int) -> np.ndarray:
        _, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    return _per_image(x, code)


def _band(x: np.ndarray, top: np.ndarray, height: float, colour: np.ndarray) -> np.ndarray:
    out = x.copy()
    h = x.shape[1]
    for i in range(len(x)):
        a = int(round(top[i] * h))
        out[i, a:min(h, a + max(1, int(round(height * h))))] = colour[i]
    return out


def _sunglasses(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    # A dark band over the eyes (about 0.3-0.45 of the height on an aligned face).
    height = (0.10, 0.15, 0.22)[s - 1]
    top = rng.uniform(0.28, 0.34, len(x)) - height / 4
    return _band(x, top, height, rng.integers(0, 40, (len(x), 1)).repeat(3, axis=1).astype(np.uint8))


def _mask(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    # A light band from below the nose down: the lower face covered.
    height = (0.25, 0.35, 0.45)[s - 1]
    top = 1.0 - height + rng.uniform(-0.03, 0.03, len(x))
    colour = np.clip(rng.normal((170, 190, 210), 20, (len(x), 3)), 0, 255).astype(np.uint8)
    return _band(x, top, height, colour)


def _rotate_scale(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    degrees, scale = ((5.0, 0.95), (10.0, 0.9), (15.0, 0.85))[s - 1]
    signs = rng.choice((-1.0, 1.0), len(x))
    h, w = x.shape[1:3]

    def warp(img: np.ndarray, i: int) -> np.ndarray:
        rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(signs[i] * degrees), scale)
        return cv2.warpAffine(img, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    return _per_image(x, warp)


_CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "low_light": _low_light, "over_exposure": _over_exposure, "contrast": _contrast,
    "gaussian_noise": _gaussian_noise, "sensor_noise": _sensor_noise, "defocus_blur": _defocus,
    "motion_blur": _motion, "jpeg": _jpeg, "sunglasses": _sunglasses, "mask": _mask,
    "rotate_scale": _rotate_scale,
}
CORRUPTIONS = tuple(_CORRUPTIONS)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` (uint8 (n, H, W, 3) RGB) under corruption ``name`` at ``severity`` (1..3), seeded."""
    if name not in _CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (n, H, W, 3), got {x.dtype} {x.shape}")
    rng = np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity)])
    arg = x if name in ("jpeg", "sunglasses", "mask", "rotate_scale") else x.astype(np.float64)
    return _CORRUPTIONS[name](arg, severity, rng)


def shift_suite(images: np.ndarray, seed: int = 0, names: Sequence[str] | None = None,
                severities: Sequence[int] = SEVERITIES) -> Iterator[tuple[str, int, np.ndarray]]:
    """Every (corruption, severity, corrupted images), corruptions in ``CORRUPTIONS`` order."""
    for name in names or CORRUPTIONS:
        for severity in severities:
            yield name, severity, corrupt(images, name, severity, seed)
