"""Synthetic faces, the embedded default dataset.

Each identity is a parameter vector (face shape, skin tone, eye/brow/nose/mouth geometry, hair, marks);
each image redraws it under nuisance (pose and shift, scale, lighting, expression, glasses or occlusion,
background, blur, noise). Identity lives in shapes and their relations while the nuisance moves every
pixel, so a classifier on raw pixels does clearly worse than a CNN: `pixel_linear_accuracy` measures
the pixel side of that comparison.
"""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .faceset import FaceSet

SYNTH_SCHEMA = "faceprobe.synth/1"
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA

_HAIR = np.array([[25, 20, 18], [60, 40, 25], [110, 75, 45], [200, 165, 110], [160, 70, 35], [150, 150, 150]],
                 np.float32)
_IRIS = np.array([[70, 45, 25], [60, 110, 170], [70, 120, 80], [110, 110, 120], [30, 25, 25]], np.float32)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _axes(a: float, b: float) -> tuple[int, int]:
    return max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE)))


def _fixed(points) -> list[np.ndarray]:
    return [np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)]


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


class _Layer:
    """Premultiplied RGB + alpha canvas, so a warped face composites cleanly over any background."""

    def __init__(self, size: int):
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), np.float32)

    def ellipse(self, c, axes, colour, angle=0.0, start=0, end=360, thickness=-1) -> None:
        for target, col in ((self.rgb, tuple(map(float, colour))), (self.alpha, 1.0)):
            cv2.ellipse(target, _pt(*c), _axes(*axes), angle, start, end, col, thickness, _AA, _SHIFT)

    def poly(self, points, colour) -> None:
        pts = _fixed(points)
        cv2.fillPoly(self.rgb, pts, tuple(map(float, colour)), _AA, _SHIFT)
        cv2.fillPoly(self.alpha, pts, 1.0, _AA, _SHIFT)

    def line(self, points, colour, thickness: int) -> None:
        pts = _fixed(points)
        for target, col in ((self.rgb, tuple(map(float, colour))), (self.alpha, 1.0)):
            cv2.polylines(target, pts, False, col, max(1, thickness), _AA, _SHIFT)


def identity_params(rng: np.random.Generator) -> dict:
    """One person: geometry relative to the face box, colours, hair style and marks."""
    u = rng.uniform
    skin_t = u(0, 1)
    skin = (1 - skin_t) * np.array([232, 196, 168]) + skin_t * np.array([105, 70, 50]) + rng.normal(0, 8, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 12, 3)
    return {
        "face_w": u(0.25, 0.32), "face_h": u(0.32, 0.40), "jaw": u(0.55, 0.95), "chin": u(0.9, 1.1),
        "skin": np.clip(skin, 0, 255), "hair": np.clip(hair, 0, 255),
        "hair_style": int(rng.integers(5)), "hairline": u(0.30, 0.60), "hair_volume": u(1.02, 1.18),
        "eye_dx": u(0.30, 0.48), "eye_y": u(-0.22, -0.02), "eye_w": u(0.13, 0.23), "eye_h": u(0.35, 0.70),
        "eye_tilt": u(-12, 12), "iris": _IRIS[rng.integers(len(_IRIS))],
        "brow_dy": u(0.10, 0.22), "brow_len": u(0.8, 1.5), "brow_thick": u(0.02, 0.06),
        "brow_angle": u(-18, 18), "brow_arch": u(0.0, 0.6),
        "nose_len": u(0.14, 0.32), "nose_w": u(0.10, 0.24), "nose_style": int(rng.integers(2)),
        "mouth_y": u(0.36, 0.58), "mouth_w": u(0.22, 0.50), "lip": u(0.02, 0.06),
        "lip_colour": np.clip(skin * u(0.55, 0.8) + np.array([60, 0, 10]) * u(0, 1), 0, 255),
        "ear": u(0.14, 0.24), "beard": bool(u() < 0.2), "moustache": bool(u() < 0.25),
        "glasses_rate": 0.75 if u() < 0.2 else 0.05,
        "mole": (u(-0.6, 0.6), u(-0.1, 0.6)) if u() < 0.4 else None,
    }


def draw_face(p: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """One image of identity ``p`` under nuisance drawn from ``rng``: uint8 (size, size, 3) RGB."""
    u = rng.uniform
    s = float(size)
    cx = cy = s / 2
    fw, fh = p["face_w"] * s, p["face_h"] * s
    yaw, pitch = u(-1, 1), u(-1, 1)
    fx, fy = cx + yaw * 0.12 * fw, cy + pitch * 0.06 * fh  # features move with head turn, outline stays
    smile, eye_open = u(-0.3, 1.0), (0.12 if u() < 0.08 else u(0.5, 1.1))
    mouth_open = u(0.2, 1.0) if u() < 0.3 else 0.0
    brow_raise = u(-0.5, 1.0)
    skin, hair = p["skin"], p["hair"]
    layer = _Layer(size)

    clothes = rng.uniform(20, 235, 3)
    layer.ellipse((cx, cy + fh * 1.9), (fw * 1.9, fh * 0.9), clothes)
    layer.poly([(cx - fw * 0.42, cy + fh * 0.5), (cx + fw * 0.42, cy + fh * 0.5),
                (cx + fw * 0.5, cy + fh * 1.3), (cx - fw * 0.5, cy + fh * 1.3)], skin * 0.85)
    style = p["hair_style"]
    if style == 1:  # long hair falls behind the face
        layer.poly([(cx - fw * 1.2, cy - fh * 0.2), (cx + fw * 1.2, cy - fh * 0.2),
                    (cx + fw * 1.3, cy + fh * 1.1), (cx - fw * 1.3, cy + fh * 1.1)], hair)
    for side in (-1, 1):
        if style != 1 and side * yaw < 0.6:  # the far ear hides behind a turned head
            layer.ellipse((cx + side * fw * 0.98, cy - fh * 0.05), (fw * 0.18, p["ear"] * fh), skin * 0.92)
    if style != 2:
        volume = p["hair_volume"]
        layer.ellipse((cx - yaw * 0.04 * fw, cy - fh * 0.25), (fw * volume, fh * 0.85 * volume), hair,
                      start=180, end=360)

    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    lower = np.clip(np.sin(t), 0, None)
    width = 1 - (1 - p["jaw"]) * lower ** 2
    chin = np.where(lower > 0, p["chin"], 1.0)
    outline = np.stack([cx + fw * width * np.cos(t), cy + fh * np.sin(t) * chin], 1)
    layer.poly(outline, skin)

    hairline = cy - fh * (1 - p["hairline"])
    if style != 2:
        dip = fh * (0.35 if style == 3 else 0.12)  # a fringe comes far down the forehead
        rows = min(size, int(hairline + dip) + 2)  # the hair cannot reach below this row
        yy, xx = (g[:rows] for g in _grid(size))
        face_mask = np.zeros((size, size), np.float32)
        cv2.fillPoly(face_mask, _fixed(outline), 1.0, _AA, _SHIFT)
        parting = 0.15 * fw * (style == 4)
        line_y = hairline + dip * (1 - ((xx - cx - parting) / fw) ** 2) - fh * 0.25 * ((xx - cx) / fw) ** 2
        cover = face_mask[:rows] * np.clip((line_y - yy) / 1.5, 0, 1)
        layer.rgb[:rows] += (hair[None, None, :].astype(np.float32) - layer.rgb[:rows]) * cover[..., None]

    ex, ey = p["eye_dx"] * fw, fy + p["eye_y"] * fh
    ew, eh = p["eye_w"] * fw, p["eye_w"] * fw * p["eye_h"] * eye_open
    brow_colour = hair * 0.6
    for side in (-1, 1):
        x = fx + side * ex
        layer.ellipse((x, ey), (ew, max(eh, 0.6)), (245, 245, 240), angle=side * p["eye_tilt"])
        if eye_open > 0.3:
            layer.ellipse((x + yaw * ew * 0.25, ey), (ew * 0.45, min(ew * 0.45, eh)), p["iris"])
            layer.ellipse((x + yaw * ew * 0.25, ey), (ew * 0.18, min(ew * 0.18, eh)), (15, 15, 15))
        by = ey - p["brow_dy"] * fh - brow_raise * 0.03 * fh
        bl = ew * p["brow_len"]
        ang = np.deg2rad(side * p["brow_angle"])
        arch = p["brow_arch"] * 0.05 * fh
        pts = [(x + side * bl * k * np.cos(ang), by - side * bl * k * np.sin(ang) - arch * (1 - k * k))
               for k in np.linspace(-1, 1, 7)]
        layer.line(pts, brow_colour, int(round(p["brow_thick"] * fh)))

    nx = fx + yaw * 0.08 * fw
    ny0, ny1 = ey + fh * 0.05, ey + p["nose_len"] * fh + fh * 0.05
    nose_colour = skin * 0.72
    if p["nose_style"]:
        half = p["nose_w"] * fw * 0.5
        layer.line([(nx - fw * 0.02, ny0), (nx - half, ny1), (nx + half, ny1)], nose_colour,
                   max(1, int(s / 90)))
    else:
        for side in (-1, 1):
            layer.ellipse((nx + side * p["nose_w"] * fw * 0.3, ny1), (p["nose_w"] * fw * 0.18, fh * 0.025),
                          nose_colour * 0.7)
        layer.line([(nx, ny0), (nx, ny1 - fh * 0.03)], nose_colour, max(1, int(s / 110)))

    my, mw = fy + p["mouth_y"] * fh, p["mouth_w"] * fw
    if p["moustache"]:
        layer.ellipse((fx, my - fh * 0.06), (mw * 1.05, fh * 0.05), hair * 0.8)
    if p["beard"]:
        beard = outline[outline[:, 1] > my - fh * 0.05]
        layer.poly(np.concatenate([beard, [(fx + mw, my), (fx - mw, my)]]), hair * 0.8)
    if mouth_open:
        layer.ellipse((fx, my + fh * 0.02), (mw * 0.8, fh * 0.09 * mouth_open), (60, 20, 25))
    curve = smile * 0.08 * fh
    lip = [(fx + mw * k, my - curve * (1 - k * k) + curve) for k in np.linspace(-1, 1, 9)]
    layer.line(lip, p["lip_colour"], max(1, int(round(p["lip"] * fh))))
    if p["mole"] is not None:
        layer.ellipse((fx + p["mole"][0] * fw, fy + p["mole"][1] * fh), (s / 80, s / 80), skin * 0.4)

    if u() < p["glasses_rate"]:
        frame = rng.uniform(0, 120, 3)
        dark = u() < 0.2
        for side in (-1, 1):
            if dark:
                layer.ellipse((fx + side * ex, ey), (ew * 1.4, ew * 1.1), frame * 0.3)
            layer.ellipse((fx + side * ex, ey), (ew * 1.4, ew * 1.1), frame, thickness=max(1, int(s / 60)))
        layer.line([(fx - ex + ew * 1.4, ey), (fx + ex - ew * 1.4, ey)], frame, max(1, int(s / 60)))
    if u() < 0.2:  # occluder: a hand, a scarf, a sticker
        oc = rng.uniform(20, 235, 3)
        ox, oy = cx + u(-0.8, 0.8) * fw, cy + u(-0.6, 0.9) * fh
        layer.ellipse((ox, oy), (u(0.2, 0.5) * fw, u(0.15, 0.35) * fh), oc, angle=u(0, 180))

    # pose and scale warp the drawn head as a whole, so its parts stay in register
    m = cv2.getRotationMatrix2D((cx, cy), float(np.clip(rng.normal(0, 12), -24, 24)), u(0.78, 1.12))
    m[:, 2] += np.clip(rng.normal(0, 0.11, 2), -0.2, 0.2) * s
    rgb = cv2.warpAffine(layer.rgb, m, (size, size), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(layer.alpha, m, (size, size), flags=cv2.INTER_LINEAR)[..., None]

    yy, xx = _grid(size)
    yy, xx = yy / s - 0.5, xx / s - 0.5
    g = u(0, 2 * np.pi)
    ramp = (xx * np.float32(np.cos(g)) + yy * np.float32(np.sin(g)))[..., None]
    background = rng.uniform(20, 235, 3).astype(np.float32)
    background = background + rng.uniform(-60, 60, 3).astype(np.float32) * ramp
    img = background * (1 - alpha) + rgb
    d = u(0, 2 * np.pi)
    shading = 1 + np.float32(u(0, 0.6)) * (xx * np.float32(np.cos(d)) + yy * np.float32(np.sin(d)))
    img *= shading[..., None] * (u(0.7, 1.2) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)
    if u() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), u(0.3, 1.5) * s / 112)
    img += rng.standard_normal(img.shape, np.float32) * np.float32(u(0, 10))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _seed(seed: int, *path: int) -> np.random.Generator:
    # one stream per identity and per image: identity i looks the same whatever N and M are
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def synthesize(out_dir: str | Path, identities: int = 20, images_per_identity: int = 10, size: int = 112,
               seed: int = 0, progress: bool = True) -> Path:
    """Write ``identities`` x ``images_per_identity`` synthetic faces as ``out_dir/idNNN/NNN.png``.

    Deterministic by seed. An existing complete dataset with the same settings is reused; an earlier
    synthetic dataset with other settings (marked by its ``synth.json``) is replaced; any other non-empty
    folder is refused.
    """
    out = Path(out_dir)
    if identities < 2 or images_per_identity < 1:
        raise ValueError(f"need at least 2 identities and 1 image each, "
                         f"got {identities} x {images_per_identity}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    settings = {"schema": SYNTH_SCHEMA, "identities": identities, "images_per_identity": images_per_identity,
                "size": size, "seed": seed}
    marker = out / "synth.json"
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous == {**settings, "complete": True}:
            return out
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and is not a synthetic dataset; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({**settings, "complete": False}) + "\n")
    digits = max(3, len(str(identities - 1)))
    total = identities * images_per_identity
    with tqdm(total=total, desc="synthesising faces", unit="img", disable=not progress, leave=False) as bar:
        for i in range(identities):
            person = identity_params(_seed(seed, i))
            folder = out / f"id{i:0{digits}d}"
            folder.mkdir()
            for j in range(images_per_identity):
                img = draw_face(person, _seed(seed, i, j + 1), size)
                cv2.imwrite(str(folder / f"{j:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                bar.update()
    marker.write_text(json.dumps({**settings, "complete": True}) + "\n")
    return out


def pixel_linear_accuracy(train_fs: FaceSet, test_fs: FaceSet) -> float:
    """Closed-set accuracy of a ridge classifier on raw pixels (the baseline a CNN must clearly beat).

    One-vs-rest least squares in the dual form (cheap when images are fewer than pixels), with the ridge
    strength chosen by exact leave-one-out accuracy on the training set, so the baseline is tuned, not weak.
    """
    if train_fs.names != test_fs.names:
        raise ValueError("train and test sets must share their identities and labels (use split_by_image)")
    x = train_fs.images.reshape(len(train_fs), -1).astype(np.float64) / 255.0
    xt = test_fs.images.reshape(len(test_fs), -1).astype(np.float64) / 255.0
    mean = x.mean(0)
    x, xt = x - mean, xt - mean
    y = np.eye(len(train_fs.names))[train_fs.labels]
    y_mean = y.mean(0)
    evals, evecs = np.linalg.eigh(x @ x.T)
    evals = np.clip(evals, 0, None)
    best = (-1.0, 0.0)
    for lam in max(evals.max(), 1e-12) * np.logspace(-6, 1, 15):
        shrink = evals / (evals + lam)
        fit = evecs @ (shrink[:, None] * (evecs.T @ (y - y_mean))) + y_mean
        leverage = (evecs ** 2) @ shrink + 1.0 / len(y)  # + the intercept's share
        loo = y - (y - fit) / (1 - leverage)[:, None]
        acc = float(np.mean(loo.argmax(1) == train_fs.labels))
        if acc > best[0]:
            best = (acc, lam)
    coef = evecs @ ((evecs.T @ (y - y_mean)) / (evals + best[1])[:, None])
    pred = xt @ x.T @ coef + y_mean
    return float(np.mean(pred.argmax(1) == test_fs.labels))
