"""One board judged: its three levels measured, compared with the thresholds, the damage localised.

Shared by the check (``runner``) and its fix search (``search``), which import this and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import FaceSet, Pairs
from .gate import judge
from .levels import feature_level, identity_level, tap_level


@dataclass(frozen=True)
class CheckOptions:
    """How much the check measures: faces at the tap level, the feature level's start images, subspace
    and steps, and the seed of every draw."""

    sample: int = 32
    feature_images: int = 1
    features: bool = True
    subspace_size: int = 3
    steps: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sample", "feature_images", "subspace_size", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                flag = {"subspace_size": "feature-subspace"}.get(name, name).replace("_", "-")
                raise ValueError(f"--{flag} must be an integer >= 1, got {value!r}")


@dataclass
class CheckData:
    """The check's faces and what every board is compared on, computed once."""

    faces: FaceSet
    images: np.ndarray  # normalised
    float_embeddings: np.ndarray  # float Keras
    pairs: Pairs
    sample: np.ndarray  # indices of the tap-level faces


def measured_checks(taps: list[dict], features: dict | None, identities: dict) -> dict[str, float | None]:
    """The gate's inputs from one board's three levels."""
    feat = (features or {}).get("summary", {})
    return {
        "worst_tap_sqnr_db": min(r["sqnr_db"] for r in taps),
        "worst_tap_cosine": min(r["cosine"] for r in taps),
        "feature_change_correlation": feat.get("change_correlation"),
        "feature_gradient_cosine": feat.get("gradient_cosine"),
        "feature_max_saturation": feat.get("max_saturation"),
        "accuracy_drop_pp": identities["accuracy_drop_pp"],
        "embedding_cosine": identities["embedding_cosine_mean"],
        "flip_fraction": identities["flip_fraction"],
    }


def localise(taps: list[dict], thresholds: dict) -> dict:
    """The taps ranked by the noise each adds over the one before it; the first tap (in depth order) that
    fails the tap thresholds."""
    ranked = sorted(taps, key=lambda r: r["noise_added"], reverse=True)
    limits = thresholds["taps"]
    broken = next((r["tap"] for r in taps
                   if r["sqnr_db"] < limits["min_sqnr_db"] or r["cosine"] < limits["min_cosine"]), None)
    return {"worst_tap": ranked[0]["tap"], "first_broken_tap": broken,
            "ranking": [{"tap": r["tap"], "noise_added": r["noise_added"]} for r in ranked]}


def check_board(model, board, data: CheckData, scales: dict, thresholds: dict,
                reference: dict | None) -> dict:
    """All three levels on one board, judged (``reference``: the feature reference, None to skip
    features). Identities are scored with the board's deploy file, taps and features with its probe file."""
    taps = tap_level(model, board, data.images[data.sample], scales)
    feats = feature_level(model, reference, board) if reference else None
    ident = identity_level(data.float_embeddings, board.embeddings(data.images), data.faces.labels,
                           data.pairs)
    verdicts = judge(measured_checks(taps, feats, ident), thresholds)
    return {"name": board.name, "info": board.info(), "passed": all(v.passed for v in verdicts),
            "verdicts": [v.to_dict() for v in verdicts], "taps": taps, "features": feats,
            "identities": ident, "localisation": localise(taps, thresholds)}
