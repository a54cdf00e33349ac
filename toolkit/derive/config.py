"""DeriveConfig: how a compact student is derived from a teacher (a TOML recipe, flags override)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DeriveConfig:
    """Pruning budget, distillation schedule and augmentation of one derivation."""

    description: str = ""
    # Pruning: a budget (parameters and/or MACs, met exactly) or keep fractions per group.
    params: int | None = None
    macs: int | None = None
    keep: tuple[float, ...] | None = None
    stream_cap: int | None = 128  # channels a residual stream keeps at most
    cost_power: float = 1.0  # importance is divided by a channel's cost to this power
    size: int | None = None  # the student's input size (default: the teacher's)
    # The saved student's stem: "space_to_depth" rewrites a strided conv on the image exactly as
    # SPACE_TO_DEPTH + a stride-1 conv; "auto" does so for kernels of at least twice the stride plus one
    # (dlib's 7x7/2: XNNPACK int8 1.48 -> 1.08 ms; MobileFaceNet's 3x3/2 gains nothing).
    stem: str = "auto"
    # Refit every conv and dense layer of the pruned student by least squares to the teacher's outputs
    # before distillation (pruned dlib-compact: cosine to dlib 0.77 -> 0.94 on unseen people).
    reconstruct: bool = False
    # Distillation.
    epochs: int = 30
    steps_per_epoch: int = 100
    minutes: float | None = None  # wall-clock bound on the fine-tuning
    batch_size: int = 32
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.02
    hint_weight: float = 0.1  # feature hints at the deepest tap of each stride
    centred_weight: float = 0.0  # the cosine about the teacher's mean embedding, beside the plain one
    synthetic_fraction: float = 0.25  # share of synthetic faces in the training pool
    partswap: float = 0.25  # share of a batch made of part-swapped faces (new pseudo-identities)
    mixup: float = 0.15  # share of a batch mixed with another face
    blur: float = 0.15
    noise: float = 0.15
    occlusion: float = 0.15
    holdout: int = 3  # identities of the training folder held out for the per-epoch verification
    seed: int = 0
    strategy: str = "default"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keep"] = list(self.keep) if self.keep is not None else None
        return d

    def with_overrides(self, **changes: Any) -> DeriveConfig:
        return validate_derive_config(
            {**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}}
        )


STEMS = ("auto", "conv", "space_to_depth")
_FRACTIONS = ("synthetic_fraction", "partswap", "mixup", "blur", "noise", "occlusion")


def validate_derive_config(values: dict) -> DeriveConfig:
    """A DeriveConfig from plain values; an unknown key or a value out of range is named."""
    fields = {f.name: f for f in dataclasses.fields(DeriveConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown derive setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    v = dict(values)
    if v.get("keep") is not None:
        keep = v["keep"] if isinstance(v["keep"], (list, tuple)) else [v["keep"]]
        if not keep or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in keep):
            raise ValueError(f"keep must be fractions in (0, 1], got {v['keep']!r}")
        v["keep"] = tuple(float(f) for f in keep)
    for key in ("params", "macs", "stream_cap", "size", "epochs", "steps_per_epoch", "batch_size"):
        if v.get(key) is not None and (not isinstance(v[key], int) or isinstance(v[key], bool) or v[key] < 1):
            raise ValueError(f"{key} must be a positive integer, got {v[key]!r}")
    for key in ("learning_rate", "minutes"):
        if v.get(key) is not None and not (isinstance(v[key], (int, float)) and v[key] > 0):
            raise ValueError(f"{key} must be a positive number, got {v[key]!r}")
    for key in _FRACTIONS + ("final_lr_fraction",):
        if key in v and not (isinstance(v[key], (int, float)) and 0 <= v[key] <= 1):
            raise ValueError(f"{key} must be between 0 and 1, got {v[key]!r}")
    for key in ("hint_weight", "centred_weight"):
        if key in v and not (isinstance(v[key], (int, float)) and v[key] >= 0):
            raise ValueError(f"{key} must be a number >= 0, got {v[key]!r}")
    if "holdout" in v and (not isinstance(v["holdout"], int) or v["holdout"] < 0):
        raise ValueError(f"holdout must be a whole number of identities, got {v['holdout']!r}")
    if not isinstance(v.get("reconstruct", False), bool):
        raise ValueError(f"reconstruct must be true or false, got {v['reconstruct']!r}")
    if v.get("stem", "auto") not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {v['stem']!r}")
    if v.get("strategy", "default") not in ("default", "mirrored", "multi-worker"):
        raise ValueError(f"strategy must be default, mirrored or multi-worker, got {v['strategy']!r}")
    return DeriveConfig(**v)


def load_derive_config(path: str | os.PathLike) -> DeriveConfig:
    """The ``[derive]`` table of a TOML recipe (or its top level)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no derive recipe at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    try:
        return validate_derive_config(data.get("derive", data))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def parse_count(text: str) -> int:
    """ "1.1M", "150M", "800k" or "1100000" as an integer."""
    t = text.strip().lower().replace(",", "").replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a count; write e.g. 1.1M, 150M or 800k") from None
    if value < 1:
        raise ValueError(f"{text!r} must be at least 1")
    return int(round(value))
