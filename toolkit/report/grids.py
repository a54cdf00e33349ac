"""PNG figures of probe results (OpenCV): stage grids and the same-person figure.

Pixel values are shown three ways, each scaled so a pattern is visible whatever its size, and each cell
says its scale:
  result   the ascent's final image, stretched from its own min..max to 0..255 (raw ascents leave the
           valid pixel range, so a plain denormalisation would saturate);
  change   final - start, mid-grey = no change, stretched symmetrically by its 99th-percentile |value|
           (a first-stage change at the raw step is ~1e-4: scaled by its own size it is visible, where
           in the result it cannot be told from the start image); the cell prints that scale (+-s);
  map      a channel's pre-activation map, stretched over its 1st..99th percentile into the viridis
           colour map, with a colour bar and the values at its ends.
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


def change_scale(delta: np.ndarray, percentile: float = 99.0) -> float:
    """The ``percentile`` of |change| (its maximum when that is 0): a few extreme pixels do not set it."""
    d = np.abs(np.asarray(delta, np.float64))
    return float(np.percentile(d, percentile)) or float(d.max())


def signed(delta: np.ndarray) -> np.ndarray:
    """A signed change -> uint8 with 128 = 0 and +-change_scale -> 255 / 1 (beyond: clipped)."""
    d = np.asarray(delta, np.float64)
    peak = change_scale(d)
    if peak < 1e-30:
        return np.full(d.shape, 128, np.uint8)
    return np.round(128 + 127 * np.clip(d / peak, -1, 1)).astype(np.uint8)


def heat(feature_map: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """A 2-D map -> (RGB uint8 through viridis stretched over its 1st..99th percentile, that range)."""
    bgr = cv2.applyColorMap(stretch(feature_map, 1.0), cv2.COLORMAP_VIRIDIS)
    lo, hi = np.percentile(np.asarray(feature_map, np.float64), [1.0, 99.0])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (float(lo), float(hi))


BAR = 8  # colour bar width
STRIP = 14  # text strip under a cell


def _annotated(rgb: np.ndarray, text: str, bar: np.ndarray | None = None, size: int = CELL) -> np.ndarray:
    """A ``size`` square cell: the image, a colour bar at its right (when given) and ``text`` below."""
    canvas = np.full((size, size, 3), 255, np.uint8)
    side = size - STRIP
    canvas[:side, :side - (BAR + 2 if bar is not None else 0)] = cv2.resize(
        _cell(rgb, side), (side - (BAR + 2 if bar is not None else 0), side), interpolation=cv2.INTER_NEAREST)
    if bar is not None:
        canvas[:side, side - BAR:side] = cv2.resize(bar, (BAR, side), interpolation=cv2.INTER_LINEAR)
    _text(canvas, text, 1, size - 3, 0.3)
    return canvas


def _viridis_bar() -> np.ndarray:
    """A vertical viridis colour bar, high values at the top."""
    ramp = np.linspace(255, 0, 64).astype(np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


def _grey_bar() -> np.ndarray:
    ramp = np.linspace(255, 1, 64).astype(np.uint8)[:, None]
    return np.repeat(ramp[..., None], 3, axis=-1)


def map_cell(feature_map: np.ndarray) -> np.ndarray:
    """A feature map cell with its colour bar and the values at the bar's ends (bottom..top)."""
    rgb, (lo, hi) = heat(feature_map)
    return _annotated(rgb, f"{lo:.2g}..{hi:.2g}", _viridis_bar())


def change_cell(delta: np.ndarray) -> np.ndarray:
    """A change cell (mid-grey = 0) with its grey bar and its scale: black..white = -s..+s."""
    return _annotated(signed(delta), f"+-{change_scale(delta):.2g}", _grey_bar())


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
            [None] + [change_cell(f - start) for f in finals],
            [None] + [map_cell(m) for m in maps_start],
            [None] + [map_cell(m) for m in maps_final]]
    return grid(rows, ["result", "change", "map: start", "map: result"],
                ["start"] + [f"ch {c}" for c in channels], title)


def person_block(starts: np.ndarray, finals: np.ndarray, channels: list[int], title: str) -> np.ndarray:
    """Rows = photos of one person (``starts`` (n, H, W, C)), columns = channels: each ascent's change."""
    rows = [[denormalize(s)] + [change_cell(finals[i, j] - s) for j in range(finals.shape[1])]
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
