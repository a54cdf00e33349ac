"""The representative sample of training faces that int8 calibration sees."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .recipe import DEFAULT_CALIBRATION_SIZE

# Fewer faces than this give int8 ranges that clip the faces calibration did not see.
MIN_CALIBRATION_FACES = 50


def calibration_sample(
    source: np.ndarray | str | os.PathLike | None,
    image_size: int,
    count: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
) -> np.ndarray | None:
    """``count`` uint8 RGB faces (n, size, size, 3) drawn without replacement from ``source``.

    ``source``: uint8 images, or a folder of identity folders (loaded at the model's input size).
    """
    if source is None:
        return None
    if count < 1:
        raise ValueError(f"calibration size must be >= 1, got {count}")
    if isinstance(source, (str, os.PathLike)):
        from ..data import load_identity_folders

        if not Path(source).is_dir():
            raise FileNotFoundError(f"no calibration folder at {source}: pass a folder of identity folders")
        images = load_identity_folders(source, image_size=image_size, progress=False).images
    else:
        images = np.asarray(source)
    expected = (image_size, image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"calibration images have shape {images.shape}, expected (n, {image_size}, "
                         f"{image_size}, 3) RGB at the model's input size")
    if images.dtype != np.uint8:
        raise ValueError(f"calibration images are {images.dtype}; pass uint8 pixels (0..255), not normalised")
    if len(images) == 0:
        raise ValueError("no calibration images")
    if min(count, len(images)) < MIN_CALIBRATION_FACES:
        warnings.warn(f"int8 calibration on only {min(count, len(images))} faces: the quantization ranges "
                      f"may clip other faces; calibrate on at least {MIN_CALIBRATION_FACES} training faces",
                      stacklevel=2)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
    return images[pick]
