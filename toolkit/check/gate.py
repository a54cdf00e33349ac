"""Thresholds (TOML) and the pass/fail verdict that is the release gate."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_THRESHOLDS = Path(__file__).resolve().parents[2] / "models" / "check-thresholds.toml"

# check name -> (level, threshold key, direction): "min" passes when value >= threshold.
CHECKS = {
    "worst_tap_sqnr_db": ("taps", "min_sqnr_db", "min"),
    "worst_tap_cosine": ("taps", "min_cosine", "min"),
    "feature_change_correlation": ("features", "min_change_correlation", "min"),
    "feature_gradient_cosine": ("features", "min_gradient_cosine", "min"),
    "feature_max_saturation": ("features", "max_saturation", "max"),
    "worst_case_embedding_cosine": ("features", "min_worst_case_embedding_cosine", "min"),
    "accuracy_drop_pp": ("identities", "max_accuracy_drop_pp", "max"),
    "embedding_cosine": ("identities", "min_embedding_cosine", "min"),
    "flip_fraction": ("identities", "max_flip_fraction", "max"),
    "shift_accuracy_drop_pp": ("shift", "max_accuracy_drop_pp", "max"),
    "shift_worst_corruption_drop_pp": ("shift", "max_worst_corruption_drop_pp", "max"),
    "shift_flip_fraction": ("shift", "max_flip_fraction", "max"),
    "speedup_b1": ("speed", "min_speedup", "min"),
}


# A report's verdict -> the release gate's exit code.
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}


def exit_code(report: dict) -> int:
    """The release gate's exit code for a check report (or report.json read back): 0 pass, 1 fail,
    2 could not judge."""
    return EXIT_CODES[report["verdict"]]


@dataclass(frozen=True)
class Verdict:
    name: str
    level: str
    value: float | None
    threshold: float
    direction: str
    passed: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _parse(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"thresholds file {path} is not valid TOML: {exc}") from exc


def load_thresholds(path: str | os.PathLike | None = None) -> dict:
    """The default thresholds, overridden by ``path`` (unknown sections or keys are errors)."""
    merged = _parse(DEFAULT_THRESHOLDS)
    if path is None:
        return merged
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file {path} not found (see {DEFAULT_THRESHOLDS} for the format)")
    for level, values in _parse(path).items():
        if level not in merged or not isinstance(values, dict):
            raise ValueError(f"thresholds file {path}: unknown section [{level}]; "
                             f"known: {', '.join(f'[{k}]' for k in merged)}")
        for key, value in values.items():
            if key not in merged[level]:
                raise ValueError(f"thresholds file {path}: unknown key {key!r} in [{level}]; "
                                 f"known: {', '.join(merged[level])}")
            if not isinstance(value, int | float):
                raise ValueError(f"thresholds file {path}: [{level}] {key} must be a number, got {value!r}")
            merged[level][key] = float(value)
    return merged


def judge(measured: dict[str, float | None], thresholds: dict) -> list[Verdict]:
    """One verdict per measured check; a check that could not be measured (None) is skipped."""
    verdicts = []
    for name, value in measured.items():
        if value is None:
            continue
        level, key, direction = CHECKS[name]
        limit = float(thresholds[level][key])
        passed = value >= limit if direction == "min" else value <= limit
        verdicts.append(Verdict(name, level, float(value), limit, direction, bool(passed)))
    return verdicts
