"""The quantization recipe: what to quantize (variant, per-block precision, calibration, int8 I/O), kept
apart from how well it went. Export consumes it, every manifest records it, the check's fix search
returns the cheapest one that passes. Saved as TOML or JSON (schema ``faceprobe.recipe/1``)::

    schema = "faceprobe.recipe/1"
    variant = "int8"                  # float32, float16, dynamic_int8, int8, int16x8
    int8_io = false                   # int8 input and outputs (int8 variant)
    per_channel = true                # per-channel weight scales (false: one scale per tensor)
    float_ops = ["DEPTHWISE_CONV_2D"] # op kinds kept in float everywhere (int8 variant)
    [precision]                       # per tap: the block behind it; unnamed blocks follow the variant
    "stage2/block1" = "float32"
    [calibration]
    images = "faces/train"            # folder of identity folders (or faces handed over in memory)
    identities = "s1-s30"             # only these identities of it
    count = 200                       # faces drawn
    seed = 0
    range_rule = "minmax"             # or "percentile": each tensor's range set to a percentile of |x|
    percentile = 99.99
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from device.fields import is_int, is_number, require

from .. import atomic

RECIPE_SCHEMA = "faceprobe.recipe/1"
VARIANTS = ("float32", "float16", "dynamic_int8", "int8", "int16x8")
# Variants that calibrate activation ranges, and the precision their blocks get by default.
CALIBRATED = {"int8": "int8", "int16x8": "int16x8"}
PRECISIONS = ("float32", "int8", "int16x8")
RANGE_RULES = ("minmax", "percentile")
# Op kinds a recipe may keep in float across the whole int8 model (TFLite builtin names, as the
# quantizer's op denylist takes them): the ones the zoo's and imported models are made of.
FLOAT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "AVERAGE_POOL_2D",
             "MAX_POOL_2D", "PRELU", "CONCATENATION")
DEFAULT_CALIBRATION_SIZE = 200


class RecipeError(ValueError):
    """A recipe that names an unknown key or value; the message names the key."""


@dataclass(frozen=True)
class Calibration:
    """Which faces set the activation ranges, how many, and how a range is read from them."""

    images: str | None = None
    identities: str | None = None
    count: int = DEFAULT_CALIBRATION_SIZE
    seed: int = 0
    range_rule: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        require(is_int(self.count) and self.count >= 1, "calibration.count", "an integer >= 1", self.count,
                RecipeError)
        require(is_int(self.seed), "calibration.seed", "an integer", self.seed, RecipeError)
        require(self.range_rule in RANGE_RULES, "calibration.range_rule",
                f"one of {', '.join(RANGE_RULES)}", self.range_rule, RecipeError)
        require(is_number(self.percentile) and 50.0 < float(self.percentile) <= 100.0,
                "calibration.percentile", "a number in (50, 100]", self.percentile, RecipeError)
        for key in ("images", "identities"):
            value = getattr(self, key)
            require(value is None or isinstance(value, str), f"calibration.{key}", "a string", value,
                    RecipeError)


@dataclass(frozen=True)
class Recipe:
    """One exported variant: its precision per block, its calibration and its I/O type."""

    variant: str = "int8"
    precision: dict[str, str] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)
    int8_io: bool = False
    per_channel: bool = True
    float_ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(self.variant in VARIANTS, "variant", f"one of {', '.join(VARIANTS)}", self.variant,
                RecipeError)
        require(isinstance(self.precision, dict), "precision", "a table of tap = precision", self.precision,
                RecipeError)
        for tap, p in self.precision.items():
            if p not in PRECISIONS:
                raise RecipeError(f"precision.{tap!r} must be one of {', '.join(PRECISIONS)}, got {p!r}")
            if self.variant not in CALIBRATED:
                raise RecipeError(f"precision.{tap!r}: per-block precision applies to the int8 and int16x8 "
                                  f"variants, not {self.variant}")
            if self.variant == "int16x8":
                raise RecipeError(f"precision.{tap!r}: an int16x8 file is int16x8 throughout (LiteRT's 16x8 "
                                  "quantizer takes no per-block exceptions); use the int8 variant to keep "
                                  "blocks in float")
            if p != "float32" and p != self.variant:
                raise RecipeError(f"precision.{tap!r} = {p!r}: an int8 file keeps blocks in int8 or float32 "
                                  "(the converter quantizes every integer block to one activation type)")
        require(isinstance(self.int8_io, bool), "int8_io", "true or false", self.int8_io, RecipeError)
        if self.int8_io and self.variant != "int8":
            raise RecipeError(f"int8_io applies to the int8 variant, not {self.variant}")
        require(isinstance(self.per_channel, bool), "per_channel", "true or false", self.per_channel,
                RecipeError)
        if not self.per_channel and not self.calibrated:
            raise RecipeError(f"per_channel = false applies to the int8 and int16x8 variants, "
                              f"not {self.variant}")
        ops = self.float_ops
        require(isinstance(ops, tuple | list) and all(isinstance(o, str) for o in ops), "float_ops",
                "a list of op names", ops, RecipeError)
        object.__setattr__(self, "float_ops", tuple(self.float_ops))
        for op in self.float_ops:
            if op not in FLOAT_OPS:
                raise RecipeError(f"float_ops: unknown op {op!r}; choose from {', '.join(FLOAT_OPS)}")
        if self.float_ops and self.variant != "int8":
            raise RecipeError(f"float_ops applies to the int8 variant, not {self.variant}")
        if not isinstance(self.calibration, Calibration):
            raise RecipeError("calibration must be a table (images, identities, count, seed, range_rule, "
                              "percentile)")

    @property
    def calibrated(self) -> bool:
        """Whether this variant needs calibration faces."""
        return self.variant in CALIBRATED

    @property
    def keep_float(self) -> list[str]:
        """Taps whose blocks stay float, in the recipe's order."""
        return [tap for tap, p in self.precision.items() if p == "float32"]

    def with_(self, **changes: Any) -> Recipe:
        """A copy with ``changes``; ``calibration`` may be a dict of its own changes."""
        cal = changes.pop("calibration", None)
        if isinstance(cal, dict):
            changes["calibration"] = replace(self.calibration, **cal)
        elif cal is not None:
            changes["calibration"] = cal
        return replace(self, **changes)

    def calibrated_on(self, folder: str | None) -> Recipe:
        """This recipe with ``folder`` as its calibration faces where it needs some and names none (a
        recipe file leaves them open so that it can travel between machines)."""
        if folder and self.calibrated and self.calibration.images is None:
            return self.with_(calibration={"images": folder})
        return self

    def label(self) -> str:
        """A short human name: ``int8 minmax/200 +float(stage2/block1)``."""
        parts = [self.variant]
        if self.calibrated:
            c = self.calibration
            rule = c.range_rule if c.range_rule == "minmax" else f"p{c.percentile:g}"
            parts.append(f"{rule}/{c.count}")
        if self.keep_float:
            parts.append(f"+float({','.join(self.keep_float)})")
        if self.float_ops:
            parts.append(f"+float({','.join(o.lower() for o in self.float_ops)} ops)")
        if self.int8_io:
            parts.append("int8-io")
        if not self.per_channel:
            parts.append("per-tensor")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {"schema": RECIPE_SCHEMA, "variant": self.variant, "int8_io": self.int8_io,
                "per_channel": self.per_channel, "float_ops": list(self.float_ops),
                "precision": dict(self.precision),
                "calibration": asdict(self.calibration)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "recipe") -> Recipe:
        """Validate and build; every error names the key (``where`` prefixes it)."""
        if not isinstance(d, dict):
            raise RecipeError(f"{where} must be a table/object, got {type(d).__name__}")
        schema = d.get("schema", RECIPE_SCHEMA)
        if schema != RECIPE_SCHEMA:
            raise RecipeError(f"{where}: schema {schema!r} is not {RECIPE_SCHEMA!r}")
        known = {"schema", "variant", "int8_io", "per_channel", "float_ops", "precision", "calibration"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RecipeError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
        cal = d.get("calibration", {})
        if not isinstance(cal, dict):
            raise RecipeError(f"{where}: calibration must be a table, got {cal!r}")
        cal_known = set(Calibration.__dataclass_fields__)
        bad = sorted(set(cal) - cal_known)
        if bad:
            raise RecipeError(f"{where}: unknown key calibration.{bad[0]}; "
                              f"known: {', '.join(sorted(cal_known))}")
        try:
            return cls(variant=d.get("variant", "int8"), precision=dict(d.get("precision", {})),
                       calibration=Calibration(**cal), int8_io=d.get("int8_io", False),
                       per_channel=d.get("per_channel", True), float_ops=d.get("float_ops", ()))
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"{where}: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write as TOML (``.toml``) or JSON (anything else), atomically."""
        path = Path(path)
        if path.suffix == ".toml":
            atomic.write_bytes(path, to_toml(self.to_dict()).encode())
        else:
            atomic.write_json(path, self.to_dict())
        return path


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe file (TOML or JSON by extension); errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no recipe file at {path}: write one (see docs/quantization.md) or let "
                                "`faceprobe check --search` write it")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"recipe file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                          f"{exc}") from None
    return Recipe.from_dict(data, f"recipe file {path}")


def to_toml(d: dict) -> str:
    """The recipe dict as TOML (flat values first, then one table per dict)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return json.dumps([str(x) for x in v])  # a JSON array of strings is a TOML array
        return json.dumps(str(v))

    lines = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    for k, table in d.items():
        if isinstance(table, dict):
            lines += ["", f"[{k}]"]
            lines += [f"{json.dumps(str(tk))} = {value(tv)}" for tk, tv in table.items() if tv is not None]
    return "\n".join(lines) + "\n"


def as_recipe(item: str | Recipe) -> Recipe:
    """A variant name is that variant's default recipe."""
    if isinstance(item, Recipe):
        return item
    if item not in VARIANTS:
        raise RecipeError(f"unknown variant {item!r}; choose from {', '.join(VARIANTS)}")
    return Recipe(variant=item)
