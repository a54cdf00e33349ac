"""Identities under shift: float vs quantized deploy file on corrupted copies of the check faces.

Taps and identities are measured on faces like the calibration faces; a board's camera sees dark rooms,
back light, blur, noise and half-covered faces. Each corruption of ``toolkit.data.shift`` at each severity
is scored like the identity level (verification float vs quantized on the same pairs, at the float
model's threshold on those corrupted faces); per corruption the mean over severities, overall the mean
over every cell with its standard error over pairs (each pair's correctness difference averaged over the
cells first: the cells share their pairs, so they are not independent draws).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data import Pairs, normalize
from ..data.shift import SEVERITIES, shift_suite
from .boards import Board
from .levels import identity_level


@dataclass(frozen=True)
class ShiftedFaces:
    """One corruption cell: its name, severity, normalised images and the float model's embeddings."""

    name: str
    severity: int
    images: np.ndarray
    float_embeddings: np.ndarray


def shifted_faces(float_embeddings: Callable[[np.ndarray], np.ndarray], norm: dict, images: np.ndarray,
                  seed: int = 0, severities=SEVERITIES) -> list[ShiftedFaces]:
    """Every corruption cell of uint8 ``images`` with the float model's embeddings (``float_embeddings``
    of uint8 images: the Keras model's, or a float TFLite file's), computed once."""
    return [ShiftedFaces(name, s, normalize(x, norm), float_embeddings(x))
            for name, s, x in shift_suite(images, seed=seed, severities=severities)]


def _correct_diff(ident: dict) -> np.ndarray:
    """Per pair: correct at the float threshold with the float embedding minus with the quantized one."""
    scores, t = ident["pair_scores"], ident["threshold"]
    same = np.asarray(scores["issame"], bool)
    return ((np.asarray(scores["float"]) > t) == same).astype(float) - ((np.asarray(scores["quantized"]) > t)
                                                                         == same)


def shift_level(board: Board, cells: list[ShiftedFaces], labels: np.ndarray, pairs: Pairs) -> dict:
    """Per cell, per corruption and overall: the accuracy drop (pp) with its standard error, and flips."""
    rows, diffs = [], []
    for cell in cells:
        ident = identity_level(cell.float_embeddings, board.embeddings(cell.images), labels, pairs)
        diffs.append(_correct_diff(ident))
        rows.append({"corruption": cell.name, "severity": cell.severity,
                     "float_accuracy": ident["float"]["verification_accuracy"],
                     "quantized_accuracy": ident["quantized"]["verification_accuracy"],
                     "accuracy_drop_pp": ident["accuracy_drop_pp"],
                     "accuracy_drop_se_pp": ident["accuracy_drop_se_pp"],
                     "flip_fraction": ident["flip_fraction"],
                     "embedding_cosine_mean": ident["embedding_cosine_mean"]})
    per_corruption = []
    for name in dict.fromkeys(r["corruption"] for r in rows):
        mine = [i for i, r in enumerate(rows) if r["corruption"] == name]
        drops = [rows[i]["accuracy_drop_pp"] for i in mine]
        per_corruption.append({"corruption": name, "accuracy_drop_pp": float(np.mean(drops)),
                               "accuracy_drop_se_pp": _se_pp(np.mean([diffs[i] for i in mine], axis=0)),
                               "flip_fraction": float(np.mean([rows[i]["flip_fraction"] for i in mine])),
                               "worst_severity_drop_pp": float(max(drops))})
    worst = max(per_corruption, key=lambda r: r["accuracy_drop_pp"])
    return {"cells": rows, "corruptions": per_corruption,
            "summary": {"accuracy_drop_pp": float(np.mean([r["accuracy_drop_pp"] for r in rows])),
                        "accuracy_drop_se_pp": _se_pp(np.mean(diffs, axis=0)),
                        "flip_fraction": float(np.mean([r["flip_fraction"] for r in rows])),
                        "worst_corruption": worst["corruption"],
                        "worst_corruption_drop_pp": worst["accuracy_drop_pp"],
                        "cells": len(rows)}}


def _se_pp(per_pair: np.ndarray) -> float:
    return float(100.0 * np.std(per_pair, ddof=1) / np.sqrt(len(per_pair)))
