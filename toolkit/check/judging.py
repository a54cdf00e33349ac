"""One board judged: its levels measured, compared with the thresholds, the damage localised.

Shared by the check (``runner``) and its fix search (``search``), which import this and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from device.plan import ProbePlan, ProbeResult

from ..data import FaceSet, Pairs
from .boards import Board
from .disagreement import DisagreementSpec, disagreement_level
from .gate import Verdict, judge
from .levels import FeatureReference, feature_level, identity_level, tap_level
from .shift import ShiftedFaces, shift_level


@dataclass
class CheckData:
    """The check's faces and what every board is compared on, computed once."""

    faces: FaceSet
    images: np.ndarray  # normalised
    float_embeddings: np.ndarray  # float Keras
    pairs: Pairs
    sample: np.ndarray  # indices of the tap-level faces
    normalization: dict | None = None
    shifted: list[ShiftedFaces] | None = None  # corrupted copies of the faces (``--shift``)


def measured_checks(taps: list[dict], features: dict | None, identities: dict, shift: dict | None = None,
                    disagreement: dict | None = None) -> dict[str, float | None]:
    """The gate's inputs from one board's levels (a level not measured: its checks are None)."""
    feat = (features or {}).get("summary", {})
    shifted = (shift or {}).get("summary", {})
    worst = (disagreement or {}).get("summary", {})
    return {
        "worst_case_embedding_cosine": worst.get("worst_case_embedding_cosine"),
        "shift_accuracy_drop_pp": shifted.get("accuracy_drop_pp"),
        "shift_worst_corruption_drop_pp": shifted.get("worst_corruption_drop_pp"),
        "shift_flip_fraction": shifted.get("flip_fraction"),
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


@dataclass(frozen=True)
class BoardResult:
    """One board judged: its three levels, the verdicts, the localisation, the runtime configuration it ran
    in (``info``) and, where measured, its speed. ``feature_result``: the finite-difference probe result
    behind the feature level, kept in memory for the figures and the .npz files (not in ``to_json``)."""

    name: str
    info: dict
    passed: bool
    verdicts: tuple[Verdict, ...]
    taps: list[dict]
    features: dict | None
    identities: dict
    localisation: dict
    speed: dict | None = None
    shift: dict | None = None
    disagreement: dict | None = None
    feature_result: ProbeResult | None = field(default=None, compare=False, repr=False)
    disagreement_result: tuple[ProbePlan, ProbeResult] | None = field(default=None, compare=False, repr=False)

    @property
    def drop_pp(self) -> float:
        return self.identities["accuracy_drop_pp"]

    @property
    def drop_se_pp(self) -> float:
        return self.identities["accuracy_drop_se_pp"]

    @property
    def failed_checks(self) -> list[str]:
        return [v.name for v in self.verdicts if not v.passed]

    def to_json(self) -> dict:
        """The board's entry in report.json."""
        out = {"name": self.name, "info": self.info, "passed": self.passed,
               "verdicts": [v.to_dict() for v in self.verdicts], "taps": self.taps, "features": self.features,
               "identities": self.identities, "localisation": self.localisation}
        for name in ("speed", "shift", "disagreement"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def check_board(model, board: Board, data: CheckData, scales: dict, thresholds: dict,
                reference: FeatureReference | None, disagreement: DisagreementSpec | None = None
                ) -> BoardResult:
    """Every level asked for on one board, judged (``reference``: the feature reference, None to skip the
    feature statistics; ``disagreement``: the disagreement ascent, None to skip it; identities under shift
    where ``data.shifted`` holds the corrupted faces). Identities, shift and disagreement are scored with
    the board's deploy file, taps and feature statistics with its probe file."""
    taps = tap_level(model, board, data.images[data.sample], scales)
    feats, fd_quant = feature_level(model, reference, board) if reference else (None, None)
    ident = identity_level(data.float_embeddings, board.embeddings(data.images), data.faces.labels,
                           data.pairs)
    shift = shift_level(board, data.shifted, data.faces.labels, data.pairs) if data.shifted else None
    worst, found = (disagreement_level(board, disagreement, data.normalization) if disagreement
                    else (None, None))
    verdicts = tuple(judge(measured_checks(taps, feats, ident, shift, worst), thresholds))
    return BoardResult(board.name, board.info(), all(v.passed for v in verdicts), verdicts, taps, feats,
                       ident, localise(taps, thresholds), shift=shift, disagreement=worst,
                       feature_result=fd_quant,
                       disagreement_result=(disagreement.plan, found) if disagreement else None)
