"""Image subspaces for the probe: orthonormal bases a gradient is projected on.

A basis is a (k, H*W*C) float array with orthonormal rows, flattened in (H, W, C) order. The host projects
its autodiff gradient g on it exactly (coefficients B·g); the board estimates the same k coefficients by
finite differences along the rows. numpy only: the board imports this module.

Spec kinds:
  {"kind": "full"}                 no subspace (make_basis returns None)
  {"kind": "dct", "size": s}       the s x s lowest 2-D DCT-II frequencies per channel, k = s*s*C
  {"kind": "grid", "cells": g}     piecewise-constant g x g cells per channel, k = g*g*C
  {"kind": "window", "size": w}    pixel identity basis on a w x w window per channel, k = w*w*C, centred on
                                   "center": [row, col] (default: the image centre; see resolve_spec)
"""

from __future__ import annotations

import numpy as np

from .fields import is_int

KINDS = ("full", "dct", "grid", "window")
_PARAM = {"dct": "size", "grid": "cells", "window": "size"}


def validate_subspace(spec: dict, image_shape: tuple[int, int, int]) -> None:
    """Raise ValueError naming the field when ``spec`` cannot make a basis for images of ``image_shape``."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise ValueError(f"subspace.kind must be one of {', '.join(KINDS)}, got {spec!r}")
    kind = spec["kind"]
    if kind == "full":
        return
    h, w = int(image_shape[0]), int(image_shape[1])
    key = _PARAM[kind]
    value = spec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"subspace.{key} must be a positive integer for kind {kind!r}, got {value!r}")
    if value > min(h, w):
        raise ValueError(f"subspace.{key}={value} exceeds the image size {h}x{w}; use at most {min(h, w)}")
    center = spec.get("center")
    if center is not None:
        if kind != "window":
            raise ValueError(f"subspace.center only applies to kind 'window', not {kind!r}")
        if (len(center) != 2 or not (0 <= int(center[0]) < h) or not (0 <= int(center[1]) < w)):
            raise ValueError(f"subspace.center must be [row, col] inside the {h}x{w} image, got {center!r}")


def dct_matrix(n: int, size: int) -> np.ndarray:
    """The ``size`` lowest orthonormal DCT-II basis vectors of length ``n``, shape (size, n)."""
    k = np.arange(size)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def _cell_matrix(n: int, cells: int) -> np.ndarray:
    """Normalised indicator vectors of ``cells`` near-equal consecutive intervals of 0..n-1, (cells, n)."""
    m = np.zeros((cells, n))
    for c, idx in enumerate(np.array_split(np.arange(n), cells)):
        m[c, idx] = 1.0 / np.sqrt(len(idx))
    return m


def _window_matrix(n: int, size: int, center: int) -> np.ndarray:
    """Unit vectors of a ``size``-long window around ``center``, shifted to stay inside 0..n-1, (size, n)."""
    start = min(max(center - size // 2, 0), n - size)
    m = np.zeros((size, n))
    m[np.arange(size), start + np.arange(size)] = 1.0
    return m


def make_basis(spec: dict, image_shape: tuple[int, int, int]) -> np.ndarray | None:
    """Orthonormal basis rows (k, H*W*C) float32 for ``spec``, or None for the full image."""
    validate_subspace(spec, image_shape)
    h, w, c = (int(s) for s in image_shape)
    kind = spec["kind"]
    if kind == "full":
        return None
    if kind == "dct":
        rows, cols = dct_matrix(h, spec["size"]), dct_matrix(w, spec["size"])
    elif kind == "grid":
        rows, cols = _cell_matrix(h, spec["cells"]), _cell_matrix(w, spec["cells"])
    else:
        center = spec.get("center") or [h // 2, w // 2]
        rows = _window_matrix(h, spec["size"], int(center[0]))
        cols = _window_matrix(w, spec["size"], int(center[1]))
    # Separable 2-D atoms (a, b) per channel; rows of a Kronecker product of orthonormal sets are orthonormal.
    atoms = np.einsum("ah,bw->abhw", rows, cols).reshape(-1, h, w)
    basis = np.zeros((atoms.shape[0], c, h, w, c), np.float32)
    for ch in range(c):
        basis[:, ch, :, :, ch] = atoms
    return basis.reshape(-1, h * w * c)


def unit_input_position(position: list[int] | tuple[int, int], map_hw: tuple[int, int],
                        image_shape: tuple[int, int, int]) -> list[int]:
    """Input pixel at the centre of tap unit ``position`` on a ``map_hw`` map (proportional mapping)."""
    return [min(int(round((p + 0.5) * n / m - 0.5)), n - 1)
            for p, m, n in zip(position, map_hw, image_shape[:2], strict=True)]


def resolve_spec(spec: dict, unit: list[int] | None, map_hw: tuple[int, int],
                 image_shape: tuple[int, int, int]) -> dict:
    """The spec with a window's centre filled in: the target unit's input position for a unit objective."""
    if spec.get("kind") != "window" or spec.get("center") is not None or unit is None:
        return dict(spec)
    return {**spec, "center": unit_input_position(unit, map_hw, image_shape)}


def project(basis: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Coefficients B·g for gradients of shape (n, H, W, C) or (n, H*W*C): returns (n, k)."""
    g = np.asarray(gradients, np.float64).reshape(len(gradients), -1)
    return g @ np.asarray(basis, np.float64).T


def expand(basis: np.ndarray, coefficients: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Images Bᵀ·c of shape (n, H, W, C) from coefficients (n, k)."""
    x = np.asarray(coefficients, np.float64) @ np.asarray(basis, np.float64)
    return x.reshape((len(coefficients), *image_shape)).astype(np.float32)


def subspace_dims(spec: object, image_shape: tuple[int, int, int]) -> int:
    """k, the number of basis images of a subspace spec (0 for the full image, all pixels for a bad spec)."""
    channels = int(image_shape[2]) if len(image_shape) == 3 else 1
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "full":
        return 0
    param = spec.get("cells" if kind == "grid" else "size") if kind in ("dct", "grid", "window") else None
    if is_int(param):
        return param * param * channels
    return int(np.prod(image_shape))
