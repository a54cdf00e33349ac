"""Probe plans and probe results: one versioned format read by the host (autodiff) and the board
(finite differences), so any two runs of the same plan can be compared image for image. numpy only.

A plan lists targets (tap, channel), the objective, the ascent settings and the normalised start images;
every (image, target) pair is one ascent. A result holds, per (image, target), the objective per step,
the final image, the applied step sizes, the image range and, in a subspace, the gradient coefficients.

The step rule (``apply_step``) is defined here once so both halves take exactly the same step:
  raw         x <- x + alpha * d                      (the method; clipped only with options.clip)
  normalized  x <- clip(x + alpha * s * d / rms(d))   per image, s = NORMALIZED_STEP_RMS (recommended)
where d is the ascent direction (the gradient, or its projection on the plan's subspace).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import subspace as _subspace
from .files import npz_bytes, read_json, write_atomic

PLAN_SCHEMA = "faceprobe.probe-plan/1"
RESULT_SCHEMA = "faceprobe.probe-result/1"
STEP_RULES = ("raw", "normalized")
OBJECTIVES = ("mean", "unit")
# Normalised pixel range of 0..255 under the default normalisation ((p - 127.5) / 128).
DEFAULT_VALID_RANGE = (-127.5 / 128.0, 127.5 / 128.0)
# Per-image RMS of one normalized step at alpha = 1, in normalised units (4 grey levels): 20 steps can move
# an image by at most about half its valid range, enough to show a pattern without saturating it.
NORMALIZED_STEP_RMS = 1.0 / 32.0
DEFAULT_OPTIONS = {"clip": False, "jitter": 0, "l2_decay": 0.0, "blur": 0.0}
DEFAULT_FINITE_DIFFERENCE = {"epsilon_steps": 16.0, "seed": 0, "scheme": "central"}
_ARCHIVE_MEMBERS = {"images.npy", "plan_json.npy"}
_MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class PlanLimits:
    """What a board agent accepts in one plan; checked on the archive's headers before arrays are decoded."""

    max_images: int = 64
    max_targets: int = 64
    max_steps: int = 1000
    max_subspace_dims: int = 300
    max_image_side: int = 1024
    max_json_bytes: int = 1 << 20
    max_decoded_bytes: int = 64 << 20  # all members of the archive, decompressed


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a deep document cannot exhaust the stack)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list)):
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return depth


def loads_json(data: bytes | str, what: str, max_depth: int = _MAX_JSON_DEPTH) -> Any:
    """``json.loads`` refusing NaN/Infinity literals and nesting deeper than ``max_depth`` (ValueError)."""
    def refuse(literal: str) -> None:
        raise ValueError(f"{what} contains {literal}, which is not a JSON number")

    try:
        value = json.loads(data, parse_constant=refuse)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    if json_depth(value) > max_depth:
        raise ValueError(f"{what} is nested deeper than {max_depth} levels")
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (_is_int(x) or isinstance(x, float)) and math.isfinite(x)


def _expect(ok: bool, field_name: str, want: str, value: Any) -> None:
    if not ok:
        shown = repr(value)
        raise ValueError(f"{field_name} must be {want}, got {shown[:80]}")


def _check_pair(value: Any, field_name: str, numbers: bool = False) -> None:
    test = _is_number if numbers else _is_int
    _expect(isinstance(value, list) and len(value) == 2 and all(test(v) for v in value), field_name,
            "a list of two " + ("numbers" if numbers else "integers"), value)


def check_plan_json(d: Any) -> None:
    """Type-check a plan document field by field (ValueError naming the field); values are checked later."""
    _expect(isinstance(d, dict), "the plan", "a JSON object", type(d).__name__)
    if d.get("schema") != PLAN_SCHEMA:
        raise ValueError(f"schema must be {PLAN_SCHEMA!r}, got {str(d.get('schema'))[:80]!r}")
    if "targets" not in d:
        raise ValueError("targets is missing from the plan")
    _expect(isinstance(d["targets"], list), "targets", "a list", d["targets"])
    for i, t in enumerate(d["targets"]):
        _expect(isinstance(t, dict) and isinstance(t.get("tap"), str) and _is_int(t.get("channel")),
                f"targets[{i}]", "{'tap': str, 'channel': int}", t)
    sections = {"objective": {"kind": str}, "options": {"clip": bool, "jitter": int},
                "subspace": {"kind": str}, "finite_difference": {"seed": int, "scheme": str}}
    for name, types in sections.items():
        if name not in d:
            continue
        section = d[name]
        _expect(isinstance(section, dict), name, "a JSON object", section)
        for key, want in types.items():
            if key in section:
                ok = _is_int(section[key]) if want is int else isinstance(section[key], want)
                _expect(ok, f"{name}.{key}", want.__name__, section[key])
    for name, key in (("options", "l2_decay"), ("options", "blur"), ("finite_difference", "epsilon_steps")):
        if key in d.get(name, {}):
            _expect(_is_number(d[name][key]), f"{name}.{key}", "a finite number", d[name][key])
    if d.get("objective", {}).get("position") is not None:
        _check_pair(d["objective"]["position"], "objective.position")
    sub = d.get("subspace", {})
    for key in ("size", "cells"):
        if key in sub:
            _expect(_is_int(sub[key]), f"subspace.{key}", "an integer", sub[key])
    if sub.get("center") is not None:
        _check_pair(sub["center"], "subspace.center")
    if "steps" in d:
        _expect(_is_int(d["steps"]), "steps", "an integer", d["steps"])
    if "step_size" in d:
        _expect(_is_number(d["step_size"]), "step_size", "a finite number", d["step_size"])
    if "step_rule" in d:
        _expect(isinstance(d["step_rule"], str), "step_rule", "a string", d["step_rule"])
    if "valid_range" in d:
        _check_pair(d["valid_range"], "valid_range", numbers=True)
    if "seed" in d.get("finite_difference", {}):
        _expect(0 <= d["finite_difference"]["seed"] < 2**63, "finite_difference.seed", "in 0..2**63-1",
                d["finite_difference"]["seed"])


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def objective_position(objective: dict, map_hw: tuple[int, int]) -> list[int] | None:
    """The unit a ``unit`` objective maximises on a map of ``map_hw`` (default: the centre); None for mean."""
    if objective.get("kind", "mean") != "unit":
        return None
    pos = objective.get("position")
    return [int(map_hw[0]) // 2, int(map_hw[1]) // 2] if pos is None else [int(pos[0]), int(pos[1])]


def step_scale(direction: np.ndarray, plan: ProbePlan) -> np.ndarray:
    """Per-image multiplier of the direction for ``plan``'s step rule, shape (n, 1, 1, 1)."""
    d = np.asarray(direction, np.float64).reshape(len(direction), -1)
    if plan.step_rule == "raw":
        return np.full((len(d), 1, 1, 1), plan.step_size)
    rms = np.sqrt(np.mean(d * d, axis=1))
    return (plan.step_size * NORMALIZED_STEP_RMS / np.maximum(rms, 1e-12)).reshape(-1, 1, 1, 1)


def clips(plan: ProbePlan) -> bool:
    """Whether ``plan`` keeps images inside the valid range (always for the normalized rule)."""
    return plan.step_rule == "normalized" or bool(plan.options.get("clip"))


def apply_step(x: np.ndarray, direction: np.ndarray, plan: ProbePlan) -> tuple[np.ndarray, np.ndarray]:
    """One step without the host-only extras: (new images, per-image RMS of the applied step)."""
    x = np.asarray(x, np.float32)
    new = x + (step_scale(direction, plan) * direction).astype(np.float32)
    if clips(plan):
        new = np.clip(new, *plan.valid_range)
    rms = np.sqrt(np.mean(np.square(new - x, dtype=np.float64).reshape(len(x), -1), axis=1))
    return new.astype(np.float32), rms


@dataclass
class ProbePlan:
    """What to probe and how; see the module docstring. ``images``: float32 (n, H, W, 3), normalised."""

    targets: list[dict]
    images: np.ndarray
    objective: dict = field(default_factory=lambda: {"kind": "mean", "position": None})
    steps: int = 20
    step_size: float = 1.0
    step_rule: str = "raw"
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    subspace: dict = field(default_factory=lambda: {"kind": "full"})
    finite_difference: dict = field(default_factory=lambda: dict(DEFAULT_FINITE_DIFFERENCE))
    valid_range: tuple[float, float] = DEFAULT_VALID_RANGE

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, np.float32)
        self.targets = [{"tap": str(t["tap"]), "channel": int(t["channel"])} for t in self.targets]
        self.objective = {"kind": "mean", "position": None, **self.objective}
        self.options = {**DEFAULT_OPTIONS, **self.options}
        self.finite_difference = {**DEFAULT_FINITE_DIFFERENCE, **self.finite_difference}
        self.valid_range = (float(self.valid_range[0]), float(self.valid_range[1]))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def taps(self) -> list[str]:
        """Distinct taps of the targets, in first-seen order."""
        return list(dict.fromkeys(t["tap"] for t in self.targets))

    def validate(self, taps: dict[str, dict], image_shape: tuple[int, ...]) -> None:
        """Raise ValueError naming the field when the plan does not fit a model (``taps``, input shape)."""
        if not self.targets:
            raise ValueError("targets is empty: list at least one {'tap': ..., 'channel': ...}")
        for i, t in enumerate(self.targets):
            if t["tap"] not in taps:
                raise ValueError(f"targets[{i}].tap {t['tap']!r} is not a tap of this model; "
                                 f"valid taps: {', '.join(taps)}")
            n = int(taps[t["tap"]]["channels"])
            if not 0 <= t["channel"] < n:
                raise ValueError(f"targets[{i}].channel {t['channel']} is out of range for tap "
                                 f"{t['tap']!r}, which has channels 0..{n - 1}")
        want = tuple(int(s) for s in image_shape[-3:])
        if self.images.ndim != 4 or self.images.shape[0] == 0 or self.image_shape != want:
            raise ValueError(f"images must be (n, {want[0]}, {want[1]}, {want[2]}) normalised float images "
                             f"for this model, got shape {self.images.shape}")
        if not np.all(np.isfinite(self.images)):
            raise ValueError("images contain NaN or infinity")
        if self.objective["kind"] not in OBJECTIVES:
            raise ValueError(f"objective.kind must be one of {OBJECTIVES}, got {self.objective['kind']!r}")
        pos = self.objective.get("position")
        if pos is not None and (len(pos) != 2 or min(int(p) for p in pos) < 0):
            raise ValueError(f"objective.position must be [row, col] (non-negative) or null, got {pos!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not np.isfinite(self.step_size) or self.step_size <= 0:
            raise ValueError(f"step_size must be a positive number, got {self.step_size!r}")
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {STEP_RULES}, got {self.step_rule!r}")
        unknown = set(self.options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"options has unknown keys {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
        if int(self.options["jitter"]) < 0 or self.options["l2_decay"] < 0 or self.options["blur"] < 0:
            raise ValueError(f"options.jitter, .l2_decay and .blur must be >= 0, got {self.options}")
        if self.valid_range[0] >= self.valid_range[1]:
            raise ValueError(f"valid_range must be [low, high] with low < high, got {self.valid_range}")
        _subspace.check_spec(self.subspace, want)

    def to_json(self) -> dict:
        """The plan without its images, as a JSON-ready dict."""
        return _jsonable({
            "schema": PLAN_SCHEMA,
            "targets": self.targets,
            "objective": self.objective,
            "steps": self.steps,
            "step_size": self.step_size,
            "step_rule": self.step_rule,
            "options": self.options,
            "subspace": self.subspace,
            "finite_difference": self.finite_difference,
            "valid_range": list(self.valid_range),
            "image_shape": [int(len(self.images)), *self.image_shape],
        })

    @classmethod
    def from_json(cls, d: dict, images: np.ndarray) -> ProbePlan:
        """A plan from ``to_json`` output and its images; a wrong schema or missing field is a clear error."""
        check_plan_json(d)
        kwargs = {k: d[k] for k in ("objective", "steps", "step_size", "step_rule", "options", "subspace",
                                    "finite_difference", "valid_range") if k in d}
        return cls(targets=d["targets"], images=images, **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan JSON at ``path`` and its images to the sibling ``.npz``. Returns the JSON path."""
        path = Path(path)
        write_atomic(path.with_suffix(".npz"), npz_bytes({"images": self.images}))
        write_atomic(path, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbePlan:
        path = Path(path)
        images_path = path.with_suffix(".npz")
        if not path.is_file() or not images_path.is_file():
            raise FileNotFoundError(f"a plan needs {path} and its images {images_path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        with np.load(images_path) as z:
            return cls.from_json(d, z["images"])

    def to_bytes(self, compress: bool = True) -> bytes:
        """One .npz holding the images and the plan JSON (for HTTP transport; uncompressed for a job file)."""
        plan = np.frombuffer(json.dumps(self.to_json()).encode(), np.uint8)
        return npz_bytes({"images": self.images, "plan_json": plan}, compress)

    @classmethod
    def from_bytes(cls, data: bytes | str | os.PathLike, limits: PlanLimits | None = None) -> ProbePlan:
        """A plan from ``to_bytes`` output (bytes or a file path), within ``limits`` when given."""
        with PlanArchive(data, limits) as archive:
            return archive.plan()


class PlanArchive:
    """A plan archive opened lazily: its JSON and its images' shape are read from headers, so limits and
    a model's needs can be checked before the images are decoded (at most once, by ``plan``)."""

    def __init__(self, data: bytes | str | os.PathLike | BinaryIO, limits: PlanLimits | None = None):
        self.limits = limits or PlanLimits(max_images=2**31, max_targets=2**31, max_steps=2**31,
                                           max_subspace_dims=2**31, max_image_side=2**31,
                                           max_json_bytes=2**40, max_decoded_bytes=2**62)
        if isinstance(data, (bytes, bytearray, memoryview)):
            source = io.BytesIO(data)
        else:
            source = data if hasattr(data, "read") else open(data, "rb")
        try:
            _check_entry_count(source)
            self._zip = zipfile.ZipFile(source)
        except _ZIP_ERRORS as exc:
            source.close()
            raise ValueError(f"not a probe plan archive ({exc})") from None
        self._source = source
        try:
            self._read_headers()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PlanArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._source.close()

    def _read_headers(self) -> None:
        infos = {i.filename: i for i in self._zip.infolist()}
        if set(infos) != _ARCHIVE_MEMBERS:
            raise ValueError(f"not a probe plan archive (members {sorted(infos)[:8]}, expected "
                             f"{sorted(_ARCHIVE_MEMBERS)})")
        total = sum(i.file_size for i in infos.values())
        if total > self.limits.max_decoded_bytes:
            raise PlanTooLarge(f"the plan archive decompresses to {total} bytes; this agent accepts at most "
                               f"{self.limits.max_decoded_bytes}")
        text_shape, text_dtype, fh = self._array_header("plan_json.npy")
        with fh:
            if text_dtype != np.uint8 or len(text_shape) != 1:
                raise ValueError("not a probe plan archive (plan_json must be a 1-D uint8 array)")
            if text_shape[0] > self.limits.max_json_bytes:
                raise PlanTooLarge(f"the plan JSON is {text_shape[0]} bytes; at most "
                                   f"{self.limits.max_json_bytes} are accepted")
            raw = self._read_exact(fh, text_shape[0], "plan_json")
        self.json = loads_json(raw.tobytes(), "the plan JSON")
        check_plan_json(self.json)
        shape, dtype, fh = self._array_header("images.npy")
        fh.close()
        if dtype != np.float32 or len(shape) != 4:
            raise ValueError(f"images must be a 4-D float32 array (n, H, W, C), got {dtype} {shape}")
        self.image_count = int(shape[0])
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in shape[1:])
        self._check_limits()

    def _array_header(self, name: str) -> tuple[tuple[int, ...], np.dtype, Any]:
        try:
            fh = self._zip.open(name)
        except _ZIP_ERRORS as exc:
            raise ValueError(f"not a probe plan archive ({name}: {exc})") from None
        try:
            version = np.lib.format.read_magic(fh)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = header(fh)
        except _ZIP_ERRORS as exc:
            fh.close()
            raise ValueError(f"not a probe plan archive ({name}: {exc})") from None
        if fortran or dtype.hasobject:
            fh.close()
            raise ValueError(f"not a probe plan archive ({name} must be a plain C-order array)")
        return tuple(shape), dtype, fh

    @staticmethod
    def _read_exact(fh, count: int, name: str, dtype: np.dtype = np.uint8) -> np.ndarray:
        nbytes = count * np.dtype(dtype).itemsize
        try:
            data = fh.read(nbytes)
        except _ZIP_ERRORS as exc:
            raise ValueError(f"not a probe plan archive ({name}: {exc})") from None
        if len(data) != nbytes:
            raise ValueError(f"not a probe plan archive ({name} is cut off)")
        return np.frombuffer(data, dtype)

    def _check_limits(self) -> None:
        lim, d = self.limits, self.json
        checks = [
            (self.image_count, lim.max_images, "images"),
            (len(d["targets"]), lim.max_targets, "targets"),
            (d.get("steps", 20), lim.max_steps, "steps"),
            (max(self.image_shape[:2], default=0), lim.max_image_side, "image side (pixels)"),
            (subspace_dims(d.get("subspace", {"kind": "full"}), self.image_shape), lim.max_subspace_dims,
             "subspace dimensions"),
        ]
        for value, limit, what in checks:
            if value > limit:
                raise PlanTooLarge(f"the plan has {value} {what}; this agent accepts at most {limit}")

    def plan(self) -> ProbePlan:
        """Decode the images and build the plan (ValueError naming the field when it is malformed)."""
        _, dtype, fh = self._array_header("images.npy")
        with fh:
            count = self.image_count * int(np.prod(self.image_shape))
            images = self._read_exact(fh, count, "images", dtype).reshape(self.image_count, *self.image_shape)
        return ProbePlan.from_json(self.json, images)


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
               RuntimeError, KeyError)


def _check_entry_count(fh) -> None:
    """Refuse archives whose end record lists other than two entries, before zipfile parses the directory
    (a body of millions of tiny entries would otherwise cost far more memory than its size)."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - (1 << 16) - 22))
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise ValueError("no zip end record")
    entries = int.from_bytes(tail[at + 10:at + 12], "little")
    if entries != len(_ARCHIVE_MEMBERS):
        raise ValueError(f"{entries} members, expected {len(_ARCHIVE_MEMBERS)}")
    fh.seek(0)


class PlanTooLarge(ValueError):
    """A plan over the agent's limits (answered 413)."""


def subspace_dims(spec: Any, image_shape: tuple[int, int, int]) -> int:
    """k, the number of basis images of a subspace spec (0 for the full image, all pixels for a bad spec)."""
    channels = int(image_shape[2]) if len(image_shape) == 3 else 1
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "full":
        return 0
    param = spec.get("cells" if kind == "grid" else "size") if kind in ("dct", "grid", "window") else None
    if _is_int(param):
        return param * param * channels
    return int(np.prod(image_shape))


_RESULT_ARRAYS = ("objective", "final_images", "step_norms", "gradients", "ranges", "captured_share")


@dataclass
class ProbeResult:
    """One run of a plan. Arrays are indexed [image, target, ...] in the plan's order.

    objective (n_images, n_targets, steps+1): value before each step and after the last;
    final_images (n_images, n_targets, H, W, C); step_norms (n_images, n_targets, steps): per-image RMS of the
    applied step, normalised units; gradients (n_images, n_targets, steps, k): subspace coefficients B·g,
    optional; ranges (n_images, n_targets, steps+1, 2): image min and max, optional; captured_share
    (n_images, n_targets, steps): ||B·g|| / ||g||, optional (host only: the board never sees g);
    meta: method ("autodiff" or "finite-difference"), runtime info, the plan JSON under "plan".
    """

    objective: np.ndarray
    final_images: np.ndarray
    step_norms: np.ndarray
    meta: dict
    gradients: np.ndarray | None = None
    ranges: np.ndarray | None = None
    captured_share: np.ndarray | None = None

    @property
    def plan_json(self) -> dict:
        return self.meta.get("plan", {})

    @property
    def gain(self) -> np.ndarray:
        """Objective increase over the whole ascent, (n_images, n_targets)."""
        return self.objective[..., -1] - self.objective[..., 0]

    def summary(self) -> dict:
        """JSON summary: the meta plus per-target objective start/end and step statistics."""
        targets = self.plan_json.get("targets", [{}] * self.objective.shape[1])
        per_target = []
        for j, t in enumerate(targets):
            row = {**t, "objective_start": float(np.mean(self.objective[:, j, 0])),
                   "objective_final": float(np.mean(self.objective[:, j, -1])),
                   "step_rms_first": float(np.mean(self.step_norms[:, j, 0])),
                   "step_rms_last": float(np.mean(self.step_norms[:, j, -1]))}
            if self.ranges is not None:
                row["final_min"] = float(self.ranges[:, j, -1, 0].min())
                row["final_max"] = float(self.ranges[:, j, -1, 1].max())
            if self.captured_share is not None:
                row["captured_share"] = float(np.mean(self.captured_share[:, j]))
            per_target.append(row)
        return _jsonable({"schema": RESULT_SCHEMA, "shape": list(self.objective.shape),
                          "targets": per_target, "meta": self.meta})

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``result.npz`` (arrays) and ``result.json`` (summary and meta) into ``directory``."""
        d = Path(directory)
        arrays = {k: getattr(self, k) for k in _RESULT_ARRAYS if getattr(self, k) is not None}
        write_atomic(d / "result.npz", npz_bytes(arrays))
        write_atomic(d / "result.json", (json.dumps(self.summary(), indent=2) + "\n").encode())
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ProbeResult:
        d = Path(directory)
        if not (d / "result.npz").is_file() or not (d / "result.json").is_file():
            raise FileNotFoundError(f"{d} holds no probe result (result.npz + result.json)")
        summary = read_json(d / "result.json", "probe result")
        if summary.get("schema") != RESULT_SCHEMA:
            raise ValueError(f"{d / 'result.json'}: schema must be {RESULT_SCHEMA!r}, "
                             f"got {summary.get('schema')!r}")
        with np.load(d / "result.npz") as z:
            arrays = {k: z[k] for k in _RESULT_ARRAYS if k in z}
        return cls(meta=summary["meta"], **arrays)
