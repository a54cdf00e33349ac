"""PNG figures of probe results (OpenCV): stage grids and the same-person figure.

Pixel values are shown three ways, each scaled so a pattern is visible whatever its size:
  result   the ascent's final image, stretched from its own min..max to 0..255 (raw ascents leave the
           valid pixel range, so a plain denormalisation would saturate);
  change   final - start, mid-grey = no change, stretched symmetrically by its largest |value|;
  map      a channel's pre-activation map, stretched over its 1st..99th percentile into a colour map.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..atomic import write_bytes
from ..data.normalize import denormalize

CELL = 96
LABEL = 18
HEADER = 26
FONT = cv2.FONT_HERSHEY_SIMPLEX


def stretch(image: np.ndarray, percentile: float = 0.0) -> np.ndarray:
    """The ``percentile``..(100 - ``percentile``) range of one image -> uint8 0..255, clipped (constant
    images become mid-grey). A small percentile keeps a few extreme values from flattening the rest."""
    x = np.asarray(image, np.float64)
    lo, hi = np.percentile(x, [percentile, 100 - percentile])
    if hi - lo < 1e-12:
        return np.full(x.shape, 128, np.uint8)
    return np.round(255 * np.clip((x - lo) / (hi - lo), 0, 1)).astype(np.uint8)


def signed(delta: np.ndarray) -> np.ndarray:
    """A signed change -> uint8 with 128 = 0, scaled by its largest magnitude."""
    d = np.asarray(delta, np.float64)
    peak = np.abs(d).max()
    if peak < 1e-12:
        return np.full(d.shape, 128, np.uint8)
    return np.round(128 + 127 * d / peak).astype(np.uint8)


def heat(feature_map: np.ndarray) -> np.ndarray:
    """A 2-D map -> RGB uint8 through the viridis colour map, stretched over its 1st..99th percentile."""
    bgr = cv2.applyColorMap(stretch(feature_map, 1.0), cv2.COLORMAP_VIRIDIS)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _cell(rgb: np.ndarray, size: int) -> np.ndarray:
    rgb = np.asarray(rgb, np.uint8)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    interp = cv2.INTER_NEAREST if rgb.shape[0] < size else cv2.INTER_AREA
    return cv2.resize(rgb, (size, size), interpolation=interp)


def _text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.4) -> None:
    cv2.putText(canvas, text, (x, y), FONT, scale, (20, 20, 20), 1, cv2.LINE_AA)


def grid(cells: list[list[np.ndarray | None]], row_labels: list[str], col_labels: list[str],
         title: str = "", cell: int = CELL) -> np.ndarray:
    """White-background RGB grid of image cells (None = blank) with row/column labels and a title."""
    rows, cols = len(cells), max(len(r) for r in cells)
    left = 8 + 7 * max((len(s) for s in row_labels), default=0)
    top = (HEADER if title else 0) + LABEL
    canvas = np.full((top + rows * (cell + 4) + 4, left + cols * (cell + 4) + 4, 3), 255, np.uint8)
    if title:
        _text(canvas, title, 6, HEADER - 8, 0.55)
    for c, label in enumerate(col_labels):
        _text(canvas, label, left + c * (cell + 4) + 2, top - 5)
    for r, row in enumerate(cells):
        y = top + r * (cell + 4)
        _text(canvas, row_labels[r], 4, y + cell // 2 + 4)
        for c, img in enumerate(row):
            if img is not None:
                x = left + c * (cell + 4)
                canvas[y:y + cell, x:x + cell] = _cell(img, cell)
    return canvas


def stack(blocks: list[np.ndarray]) -> np.ndarray:
    """Stack RGB figures vertically, padding widths with white."""
    width = max(b.shape[1] for b in blocks)
    return np.concatenate([np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255)
                           for b in blocks])


def stage_grid(start: np.ndarray, finals: np.ndarray, maps_start: np.ndarray, maps_final: np.ndarray,
               channels: list[int], title: str) -> np.ndarray:
    """One stage, one start image: columns = channels; rows = result, change, map on start, map on result.

    ``start`` (H, W, C) and ``finals`` (k, H, W, C) normalised; ``maps_*`` (k, h, w)."""
    start_rgb = denormalize(start)
    rows = [[start_rgb] + [stretch(f) for f in finals],
            [None] + [signed(f - start) for f in finals],
            [None] + [heat(m) for m in maps_start],
            [None] + [heat(m) for m in maps_final]]
    return grid(rows, ["result", "change", "map: start", "map: result"],
                ["start"] + [f"ch {c}" for c in channels], title)


def person_block(starts: np.ndarray, finals: np.ndarray, channels: list[int], title: str) -> np.ndarray:
    """Rows = photos of one person (``starts`` (n, H, W, C)), columns = channels: each ascent's change."""
    rows = [[denormalize(s)] + [signed(finals[i, j] - s) for j in range(finals.shape[1])]
            for i, s in enumerate(starts)]
    return grid(rows, [f"photo {i + 1}" for i in range(len(starts))],
                ["photo"] + [f"ch {c}" for c in channels], title)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG, atomically."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    write_bytes(path, buf.tobytes())
    return Path(path)
