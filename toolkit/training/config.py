"""TrainConfig: one training config (a file under ``models/``), loadable from TOML with command-line
overrides."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADS = ("arcface", "cosface")
OPTIMIZERS = ("adamw", "sgd")
STRATEGIES = ("default", "mirrored", "multi-worker")


_INT, _NUMBER, _STR, _OPT_STR = (int,), (int, float), (str,), (str, type(None))
_KIND_NAMES = {_INT: "an integer", _NUMBER: "a number", _STR: "a string", _OPT_STR: "a string",
               (int, type(None)): "an integer", (bool,): "true or false",
               (bool, str): 'true, false or a strength name such as "mild"', (dict,): "a table"}
# The type every recipe key must have (TOML gives int, float, str, bool and tables).
_TYPES = {"description": _STR, "model": _STR, "input_size": _INT, "embedding_dim": (int, type(None)),
          "width": _NUMBER, "activation": _STR, "saved_embedding": _STR, "head": _STR, "scale": _NUMBER,
          "margin": _NUMBER, "optimizer": _STR, "learning_rate": _NUMBER, "weight_decay": _NUMBER,
          "momentum": _NUMBER, "warmup_epochs": _NUMBER, "final_lr_fraction": _NUMBER, "epochs": _INT,
          "batch_size": _INT, "augment": (bool, str), "seed": _INT, "data": _OPT_STR, "identities": _OPT_STR,
          "crop": (bool,), "synth_identities": _INT, "synth_images_per_identity": _INT,
          "bn_tolerance": _NUMBER, "strategy": _STR, "extra": (dict,)}


@dataclass
class TrainConfig:
    """Everything that determines a training run (written to the run dir as config.json)."""

    description: str = ""
    # Architecture (toolkit.zoo).
    model: str = "tiny"
    input_size: int = 112
    embedding_dim: int | None = None  # None: the zoo model's default
    width: float = 1.0
    activation: str = "relu"
    # The saved embedding: "linear" (the model's last layer) or "pooled" (the global depthwise conv's output
    # before it, which generalises better to new people when the training identities are few).
    saved_embedding: str = "linear"
    # Margin head: ArcFace adds the margin to the angle, CosFace subtracts it from the cosine.
    head: str = "arcface"
    scale: float = 64.0
    margin: float = 0.5
    # Optimisation: linear warm-up then cosine decay to lr * final_lr_fraction.
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9  # SGD only
    warmup_epochs: float = 1.0
    final_lr_fraction: float = 0.0
    epochs: int = 10
    batch_size: int = 64  # global batch, split across replicas
    augment: bool | str = True  # True ("standard"), False, or a strength named in toolkit.data.pipeline
    seed: int = 0
    # Data: an identity-folder dataset, optionally a subset of identities ("s1-s30,s35");
    # with no data the trainer synthesises faces into the run dir.
    data: str | None = None
    identities: str | None = None
    crop: bool = False
    synth_identities: int = 20
    synth_images_per_identity: int = 10
    # Batch-norm check: re-estimate the moving statistics when inference-mode accuracy on the training
    # images falls more than this below training-mode accuracy.
    bn_tolerance: float = 0.05
    strategy: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into config.json

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every key's type, then its range; the message names the key and what it got."""
        for name, kinds in _TYPES.items():
            value = getattr(self, name)
            # bool is an int to Python, never a number in a recipe.
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"{name} must be {_KIND_NAMES[kinds]}, got {value!r} "
                                 f"({type(value).__name__})")
        checks = [
            (self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {self.strategy!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.input_size >= 16, f"input_size must be >= 16, got {self.input_size}"),
            (self.embedding_dim is None or self.embedding_dim >= 1,
             f"embedding_dim must be >= 1, got {self.embedding_dim}"),
            (self.width > 0, f"width must be > 0, got {self.width}"),
            (self.scale > 0, f"scale must be > 0, got {self.scale}"),
            (0 <= self.margin < 1.5, f"margin must be in [0, 1.5), got {self.margin}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.final_lr_fraction <= 1,
             f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.synth_identities >= 2, f"synth_identities must be >= 2, got {self.synth_identities}"),
            (self.synth_images_per_identity >= 1,
             f"synth_images_per_identity must be >= 1, got {self.synth_images_per_identity}"),
            # A negative tolerance always tries re-estimating (kept only where it helps).
            (-1 <= self.bn_tolerance <= 1, f"bn_tolerance must be in [-1, 1] (negative: always try "
                                           f"re-estimating), got {self.bn_tolerance}"),
            (self.saved_embedding in ("linear", "pooled"),
             f"saved_embedding must be linear or pooled, got {self.saved_embedding!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**d)

    def with_overrides(self, **overrides) -> TrainConfig:
        """A copy with the non-None overrides applied (and validated)."""
        d = self.to_dict()
        d.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(d)


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read a training config (a TOML file under ``models/``). Tables ([model], [optimizer], ...) only group
    keys: they are flattened."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe at {path}; recipes live in models/*.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) and key != "extra" else [(key, value)]
        for k, v in items:
            if k in flat:
                raise ValueError(f"{path}: key {k!r} is set twice")
            flat[k] = v
    try:
        return TrainConfig.from_dict(flat)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


# Identity selections moved to toolkit.data; the old import path works for one release.
from ..data.identities import parse_identities  # noqa: E402, F401

# The name before "recipe" came to mean the quantization recipe (``toolkit.export.load_recipe``); kept as an
# alias of ``load_train_config`` for one release.
load_recipe = load_train_config


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """`key=value` overrides; values are read as TOML literals, falling back to plain strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {pair!r} is not key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out
