"""Identity invariance per stage: are a person's photos alike at a stage, compared with other people's?

Rule: each image gives one vector per stage - its tap response (the stage tap's whole pre-activation map,
``source="responses"``) or its visualisation (the ascent changes of the stage's channels, concatenated,
``source="ascent"``). Vectors are centred on their mean over all images (removing what every face shares),
then compared by cosine similarity. With W the mean similarity over same-person pairs and B over
different-person pairs,

    invariance index = (W - B) / (1 - B)

1 when every photo of a person gives the same vector (and people differ), 0 when a person's photos are no
more alike than strangers'. The method expects the last stage higher than the first.
"""

from __future__ import annotations

import keras
import numpy as np

from device.plan import ProbePlan

from .ascent import Ascender, tap_responses
from .plans import make_plan, resolve_taps, stage_of

SOURCES = ("responses", "ascent")


def invariance_index(vectors: np.ndarray, labels: np.ndarray) -> dict:
    """Index (see the module docstring) of row ``vectors`` (n, d) with identity ``labels`` (n,), uncentred."""
    v = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
    labels = np.asarray(labels)
    if len(v) != len(labels):
        raise ValueError(f"{len(v)} vectors but {len(labels)} labels")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = v / np.maximum(norms, 1e-12)
    sim = unit @ unit.T
    iu = np.triu_indices(len(v), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    if not same.any() or same.all():
        raise ValueError("invariance needs at least two photos of one person and at least two people")
    within, between = float(sim[iu][same].mean()), float(sim[iu][~same].mean())
    return {"index": (within - between) / max(1.0 - between, 1e-12), "within": within, "between": between,
            "pairs_within": int(same.sum()), "pairs_between": int((~same).sum())}


def stage_vectors(model: keras.Model, images: np.ndarray, source: str = "responses", per_tap: int = 5,
                  rule: str = "top", **settings) -> dict[str, np.ndarray]:
    """Stage -> (n, d) vectors of normalised ``images`` (see the module docstring)."""
    if source not in SOURCES:
        raise ValueError(f"invariance source must be one of {SOURCES}, got {source!r}")
    taps = resolve_taps(model)
    stages = stage_of(model)
    if source == "responses":
        return {stages[t]: r.reshape(len(images), -1) for t, r in tap_responses(model, images, taps).items()}
    plan: ProbePlan = make_plan(model, images, taps, per_tap=per_tap, rule=rule, **settings)
    result = Ascender(model, plan).run()
    delta = result.final_images - plan.images[:, None]
    out = {}
    for t in taps:
        idx = [j for j, target in enumerate(plan.targets) if target["tap"] == t]
        out[stages[t]] = delta[:, idx].reshape(len(images), -1)
    return out


def stage_invariance(model: keras.Model, images: np.ndarray, labels: np.ndarray, source: str = "responses",
                     **kwargs) -> dict[str, dict]:
    """Stage -> invariance_index of centred stage vectors; ``kwargs`` go to ``stage_vectors``."""
    out = {}
    for stage, v in stage_vectors(model, images, source, **kwargs).items():
        out[stage] = invariance_index(v - v.mean(axis=0, keepdims=True), labels)
    return out
