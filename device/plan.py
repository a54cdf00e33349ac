"""Probe plans and probe results: one versioned format read by the host (autodiff) and the board
(finite differences), so any two runs of the same plan can be compared image for image. numpy only.

A plan lists targets (tap, channel), the objective, the ascent settings and the normalised start images;
every (image, target) pair is one ascent. A result holds, per (image, target), the objective per step,
the final image, the applied step sizes, the image range and, in a subspace, the gradient coefficients.

The step rule (``apply_step``) is defined here once so both halves take exactly the same step:
  raw         x <- x + alpha * d                      (the method; clipped only with options.clip)
  normalized  x <- clip(x + alpha * s * d / rms(d))   per image, s = NORMALIZED_STEP_RMS (recommended)
  sign        x <- clip(x + alpha * s * sign(d))      the steepest step under an L-infinity bound (schema 2)
where d is the ascent direction (the gradient, or its projection on the plan's subspace).

Objectives: ``mean`` (a target channel's map mean), ``unit`` (one unit of it) and, since schema 2,
``disagreement``: the cosine distance 1 - cos between what two files compute from the same image (the
embedding, or one tap's map), maximised from each start image within an L-infinity ``budget`` (normalised
units) around it. Such a plan has no targets (one ascent per image); ``reference`` names the second
file (a model id on a board), ``measure`` what is compared (``embedding`` or ``tap`` with ``tap``), and
``control`` how many random perturbations of the same budget the board also tries (the chance
baseline). Schema 1 plans (no disagreement) still load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import subspace as _subspace
from .fields import is_int, is_number, require, require_pair
from .files import npz_bytes, read_json, write_atomic

PLAN_SCHEMA = "faceprobe.probe-plan/2"
PLAN_SCHEMAS = ("faceprobe.probe-plan/1", PLAN_SCHEMA)  # every schema that still loads
RESULT_SCHEMA = "faceprobe.probe-result/1"
STEP_RULES = ("raw", "normalized", "sign")
OBJECTIVES = ("mean", "unit", "disagreement")
MEASURES = ("embedding", "tap")
# Normalised pixel range of 0..255 under the default normalisation ((p - 127.5) / 128).
DEFAULT_VALID_RANGE = (-127.5 / 128.0, 127.5 / 128.0)
# Per-image RMS of one normalized step at alpha = 1, in normalised units (4 grey levels): 20 steps can move
# an image by at most about half its valid range, enough to show a pattern without saturating it.
NORMALIZED_STEP_RMS = 1.0 / 32.0
DEFAULT_OPTIONS = {"clip": False, "jitter": 0, "l2_decay": 0.0, "blur": 0.0}
DEFAULT_FINITE_DIFFERENCE = {"epsilon_steps": 16.0, "seed": 0, "scheme": "central"}
# A disagreement objective's defaults: the embedding, 8 grey levels under (p - 127.5) / 128, 100 random tries.
DISAGREEMENT_DEFAULTS = {"measure": "embedding", "tap": None, "reference": None, "budget": 8.0 / 128.0,
                         "control": 100}
MAX_CONTROL = 10000


def validate_plan_json(d: Any) -> None:
    """Type-check a plan document field by field (ValueError naming the field); values are checked later."""
    require(isinstance(d, dict), "the plan", "a JSON object", type(d).__name__)
    if d.get("schema") not in PLAN_SCHEMAS:
        raise ValueError(f"schema must be one of {', '.join(map(repr, PLAN_SCHEMAS))}, "
                         f"got {str(d.get('schema'))[:80]!r}")
    if "targets" not in d:
        raise ValueError("targets is missing from the plan")
    require(isinstance(d["targets"], list), "targets", "a list", d["targets"])
    for i, t in enumerate(d["targets"]):
        require(isinstance(t, dict) and isinstance(t.get("tap"), str) and is_int(t.get("channel")),
                f"targets[{i}]", "{'tap': str, 'channel': int}", t)
    sections = {"objective": {"kind": str, "measure": str, "control": int},
                "options": {"clip": bool, "jitter": int}, "subspace": {"kind": str},
                "finite_difference": {"seed": int, "scheme": str}}
    for name, types in sections.items():
        if name not in d:
            continue
        section = d[name]
        require(isinstance(section, dict), name, "a JSON object", section)
        for key, want in types.items():
            if key in section:
                ok = is_int(section[key]) if want is int else isinstance(section[key], want)
                require(ok, f"{name}.{key}", want.__name__, section[key])
    for name, key in (("options", "l2_decay"), ("options", "blur"), ("finite_difference", "epsilon_steps")):
        if key in d.get(name, {}):
            require(is_number(d[name][key]), f"{name}.{key}", "a finite number", d[name][key])
    objective = d.get("objective", {})
    if objective.get("position") is not None:
        require_pair(objective["position"], "objective.position")
    if "budget" in objective:
        require(is_number(objective["budget"]), "objective.budget", "a finite number", objective["budget"])
    for key in ("tap", "reference"):
        if objective.get(key) is not None:
            require(isinstance(objective[key], str) and len(objective[key]) <= 256, f"objective.{key}",
                    "a string", objective[key])
    if objective.get("kind") == "disagreement" and d.get("schema") != PLAN_SCHEMA:
        raise ValueError(f"objective.kind 'disagreement' needs schema {PLAN_SCHEMA!r}")
    sub = d.get("subspace", {})
    for key in ("size", "cells"):
        if key in sub:
            require(is_int(sub[key]), f"subspace.{key}", "an integer", sub[key])
    if sub.get("center") is not None:
        require_pair(sub["center"], "subspace.center")
    if "steps" in d:
        require(is_int(d["steps"]), "steps", "an integer", d["steps"])
    if "step_size" in d:
        require(is_number(d["step_size"]), "step_size", "a finite number", d["step_size"])
    if "step_rule" in d:
        require(isinstance(d["step_rule"], str), "step_rule", "a string", d["step_rule"])
        if d["step_rule"] == "sign" and d.get("schema") != PLAN_SCHEMA:
            raise ValueError(f"step_rule 'sign' needs schema {PLAN_SCHEMA!r}")
    if "valid_range" in d:
        require_pair(d["valid_range"], "valid_range", numbers=True)
    if "seed" in d.get("finite_difference", {}):
        require(0 <= d["finite_difference"]["seed"] < 2**63, "finite_difference.seed", "in 0..2**63-1",
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
    if plan.step_rule == "sign":  # applied to sign(d) by apply_step
        return np.full((len(d), 1, 1, 1), plan.step_size * NORMALIZED_STEP_RMS)
    rms = np.sqrt(np.mean(d * d, axis=1))
    return (plan.step_size * NORMALIZED_STEP_RMS / np.maximum(rms, 1e-12)).reshape(-1, 1, 1, 1)


def clips(plan: ProbePlan) -> bool:
    """Whether ``plan`` keeps images inside the valid range (always for the normalized and sign rules)."""
    return plan.step_rule in ("normalized", "sign") or bool(plan.options.get("clip"))


def apply_step(x: np.ndarray, direction: np.ndarray, plan: ProbePlan, start: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """One step without the host-only extras: (new images, per-image RMS of the applied step); with
    ``start``, the new images are kept within the plan's disagreement budget around it."""
    x = np.asarray(x, np.float32)
    direction = np.sign(direction) if plan.step_rule == "sign" else direction
    new = x + (step_scale(direction, plan) * direction).astype(np.float32)
    if start is not None:  # a disagreement ascent stays within its budget around the start image
        budget = np.float32(plan.objective["budget"])
        new = np.clip(new, start - budget, start + budget)
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
        if self.objective["kind"] == "disagreement":
            self.objective = {**DISAGREEMENT_DEFAULTS, **self.objective}
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

    @property
    def disagreement(self) -> bool:
        """Whether the plan maximises the disagreement of two files (one ascent per image, no targets)."""
        return self.objective["kind"] == "disagreement"

    @property
    def ascents(self) -> int:
        """Ascents per image: one per target, or one for a disagreement plan."""
        return 1 if self.disagreement else len(self.targets)

    def validate(self, taps: dict[str, dict], image_shape: tuple[int, ...]) -> None:
        """Raise ValueError naming the field when the plan does not fit a model (``taps``, input shape)."""
        if self.disagreement:
            self._validate_disagreement(taps)
        elif not self.targets:
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
        _subspace.validate_subspace(self.subspace, want)

    def _validate_disagreement(self, taps: dict[str, dict]) -> None:
        o = self.objective
        if self.targets:
            raise ValueError("a disagreement plan has no targets (one ascent per image): leave targets empty")
        if o["measure"] not in MEASURES:
            raise ValueError(f"objective.measure must be one of {MEASURES}, got {o['measure']!r}")
        if o["measure"] == "tap" and o.get("tap") not in taps:
            raise ValueError(f"objective.tap {o.get('tap')!r} is not a tap of this model; "
                             f"valid taps: {', '.join(taps)}")
        if not (np.isfinite(o["budget"]) and o["budget"] > 0):
            raise ValueError(f"objective.budget must be a positive number (L-infinity, normalised units), "
                             f"got {o['budget']!r}")
        if not (isinstance(o["control"], int) and 0 <= o["control"] <= MAX_CONTROL):
            raise ValueError(f"objective.control must be an integer in 0..{MAX_CONTROL}, "
                             f"got {o['control']!r}")
        if o.get("position") is not None:
            raise ValueError("objective.position does not apply to a disagreement objective")

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
        validate_plan_json(d)
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
        targets = self.plan_json.get("targets") or [{"objective": self.plan_json.get("objective", {})
                                                      .get("kind")}] * self.objective.shape[1]
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
