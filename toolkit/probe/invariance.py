"""Identity invariance per stage: are a person's visualisations alike at a stage, compared with others'?

Rule: each image gives one vector per stage - its visualisation (``source="ascent"``, the default: the
ascent changes of the stage's channels, as in the method's same-person figure) or its tap response (the
stage tap's pre-activation map, ``source="responses"``). Every stage is pooled (area average) to one
common grid, the last stage's map size unless ``grid`` is given, so that stages are compared at the same
resolution: a finer map alone makes photos look less alike. Vectors are centred on their mean over all
images (removing what every face shares), then compared by cosine similarity. With W the mean similarity
over same-person pairs and B over different-person pairs,

    invariance index = (W - B) / (1 - B)

1 when every photo of a person gives the same vector (and people differ), 0 when a person's photos are no
more alike than strangers'. The method expects the last stage higher than the first.

``invariance_finding`` adds the controls (``toolkit.probe.controls``): the same architecture untrained,
raw pixels pooled to the same grid (how alike one person's photos already are), white noise, and a
label-permutation null (the index with identities shuffled), with a bootstrap interval over identities.
"""

from __future__ import annotations

import keras
import numpy as np

from device.plan import ProbePlan

from ..zoo import tap_layer_name
from . import controls
from .affine import excluded_stages
from .ascent import Ascender, tap_responses
from .findings import METHOD
from .plans import make_plan, resolve_taps, stage_of

SOURCES = ("ascent", "responses")
PERMUTATIONS = 200


def invariance_index(vectors: np.ndarray, labels: np.ndarray) -> dict:
    """Index (see the module docstring) of row ``vectors`` (n, d) with identity ``labels`` (n,), uncentred."""
    sim, labels = _similarities(vectors, labels)
    iu = np.triu_indices(len(sim), k=1)
    same = labels[iu[0]] == labels[iu[1]]
    if not same.any() or same.all():
        raise ValueError("invariance needs at least two photos of one person and at least two people")
    within, between = float(sim[iu][same].mean()), float(sim[iu][~same].mean())
    return {"index": _index(within, between), "within": within, "between": between,
            "pairs_within": int(same.sum()), "pairs_between": int((~same).sum())}


def _similarities(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
    labels = np.asarray(labels)
    if len(v) != len(labels):
        raise ValueError(f"{len(v)} vectors but {len(labels)} labels")
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T, labels


def _index(within, between):
    return (within - between) / np.maximum(1.0 - between, 1e-12)


def pool_grid(maps: np.ndarray, grid: int) -> np.ndarray:
    """Area-average (n, h, w, c) maps to (n, grid, grid, c); a map smaller than the grid is kept as is."""
    maps = np.asarray(maps, np.float64)
    h, w = maps.shape[1:3]
    if h <= grid and w <= grid:
        return maps
    rows = np.linspace(0, h, grid + 1).round().astype(int)
    cols = np.linspace(0, w, grid + 1).round().astype(int)
    summed = np.add.reduceat(np.add.reduceat(maps, rows[:-1], axis=1), cols[:-1], axis=2)
    return summed / (np.diff(rows)[None, :, None, None] * np.diff(cols)[None, None, :, None])


def common_grid(model: keras.Model) -> int:
    """The smallest map side among the stage taps: the grid every stage is pooled to."""
    return min(min(model.get_layer(tap_layer_name(t)).output.shape[1:3])
               for t in resolve_taps(model))


def stage_vectors(model: keras.Model, images: np.ndarray, source: str = "ascent", grid: int | None = None,
                  per_tap: int = 5, rule: str = "top", **settings) -> dict[str, np.ndarray]:
    """Stage -> (n, d) vectors of normalised ``images``, pooled to ``grid`` (see the module docstring).
    ``settings`` (ascent only) default to the method's: 20 raw steps, alpha 1, channel-mean objective."""
    if source not in SOURCES:
        raise ValueError(f"invariance source must be one of {SOURCES}, got {source!r}")
    taps = resolve_taps(model)
    stages = stage_of(model)
    grid = common_grid(model) if grid is None else int(grid)
    n = len(images)
    if source == "responses":
        return {stages[t]: pool_grid(r, grid).reshape(n, -1)
                for t, r in tap_responses(model, images, taps).items()}
    plan: ProbePlan = make_plan(model, images, taps, per_tap=per_tap, rule=rule, **{**METHOD, **settings})
    delta = Ascender(model, plan).run().final_images - plan.images[:, None]
    out = {}
    for t in taps:
        idx = [j for j, target in enumerate(plan.targets) if target["tap"] == t]
        pooled = pool_grid(delta[:, idx].reshape(n * len(idx), *plan.image_shape), grid)
        out[stages[t]] = pooled.reshape(n, -1)
    return out


def _centred(v: np.ndarray) -> np.ndarray:
    return v - v.mean(axis=0, keepdims=True)


def stage_invariance(model: keras.Model, images: np.ndarray, labels: np.ndarray, source: str = "ascent",
                     **kwargs) -> dict[str, dict]:
    """Stage -> invariance_index of centred stage vectors; ``kwargs`` go to ``stage_vectors``."""
    return {stage: invariance_index(_centred(v), labels)
            for stage, v in stage_vectors(model, images, source, **kwargs).items()}


class IdentityBootstrap:
    """The index recomputed on identities resampled with replacement, from per-identity pair sums (a
    resampled identity's photos are never paired with a copy of themselves as 'different people')."""

    def __init__(self, labels: np.ndarray, resamples: int = controls.RESAMPLES, seed: int = 0):
        self.names, self.codes = np.unique(np.asarray(labels), return_inverse=True)
        k = len(self.names)
        rng = np.random.default_rng(seed)
        self.counts = np.stack([np.bincount(rng.integers(0, k, k), minlength=k) for _ in range(resamples)])

    def indices(self, vectors: np.ndarray) -> np.ndarray:
        """(resamples,) index of ``vectors`` (rows in the order of ``labels``) over resampled identities."""
        sim, _ = _similarities(vectors, self.codes)
        k = len(self.names)
        onehot = np.eye(k)[self.codes]
        block = onehot.T @ sim @ onehot  # summed similarities between identities a and b
        size = onehot.sum(axis=0)
        pairs = np.outer(size, size)
        within_sum = (np.diag(block) - onehot.T @ np.diag(sim)) / 2  # own pairs, self-pairs removed
        within_n = size * (size - 1) / 2
        c = self.counts.astype(np.float64)
        w = (c @ within_sum) / np.maximum(c @ within_n, 1)
        off_sum, off_n = block - np.diag(np.diag(block)), pairs - np.diag(np.diag(pairs))
        b = np.einsum("ri,ij,rj->r", c, off_sum, c) / np.maximum(np.einsum("ri,ij,rj->r", c, off_n, c), 1)
        return _index(w, b)


def permutation_null(vectors: np.ndarray, labels: np.ndarray, permutations: int = PERMUTATIONS,
                     seed: int = 0) -> np.ndarray:
    """The index with identity labels shuffled, ``permutations`` times: what the index is by chance."""
    sim, labels = _similarities(vectors, labels)
    iu = np.triu_indices(len(sim), k=1)
    pair_sim = sim[iu]
    rng = np.random.default_rng(seed)
    out = np.empty(permutations)
    for p in range(permutations):
        shuffled = rng.permutation(labels)
        same = shuffled[iu[0]] == shuffled[iu[1]]
        out[p] = _index(pair_sim[same].mean(), pair_sim[~same].mean())
    return out


def invariance_finding(model: keras.Model, images: np.ndarray, labels: np.ndarray, source: str = "ascent",
                       seeds: tuple[int, ...] = controls.SEEDS, grid: int | None = None,
                       **kwargs) -> dict:
    """The invariance index per stage beside its controls (see the module docstring); ``kwargs`` go to
    ``stage_vectors``. The claim: training makes every stage's vectors more person-specific than the
    untrained network's (the method's figure is about the last stage)."""
    grid = common_grid(model) if grid is None else int(grid)
    labels = np.asarray(labels)
    boot = IdentityBootstrap(labels)
    trained = {s: _centred(v) for s, v in stage_vectors(model, images, source, grid, **kwargs).items()}
    stages = list(trained)
    untrained = [{s: _centred(v) for s, v in stage_vectors(m, images, source, grid, **kwargs).items()}
                 for m in controls.untrained_copies(model, seeds)]
    pixels = _centred(pool_grid(images, grid).reshape(len(images), -1))
    pixel_index = invariance_index(pixels, labels)["index"]
    noise = {s: invariance_index(controls.white_noise(trained[s].shape, seed=1), labels)["index"]
             for s in stages}
    nulls = {s: permutation_null(trained[s], labels) for s in stages}
    index = {s: invariance_index(trained[s], labels) for s in stages}
    ci = {}
    for s in stages:
        diff = boot.indices(trained[s]) - np.mean([boot.indices(u[s]) for u in untrained], axis=0)
        ci[s] = controls.percentile_ci(diff)
    return controls.assemble(
        "invariance_index", "each stage's vectors more person-specific after training than untrained",
        {s: 1 for s in stages},
        trained={s: index[s]["index"] for s in stages},
        untrained_seeds={s: [invariance_index(u[s], labels)["index"] for u in untrained] for s in stages},
        other_controls={"pixels": {s: pixel_index for s in stages}, "noise": noise,
                        "permutation": {s: float(nulls[s].mean()) for s in stages}},
        ci=ci, excluded=excluded_stages(model, {stage_of(model)[t]: t for t in resolve_taps(model)}),
        permutation_95={s: float(np.percentile(nulls[s], 95)) for s in stages},
        permutation_p={s: float((1 + np.sum(nulls[s] >= index[s]["index"])) / (1 + len(nulls[s])))
                       for s in stages},
        detail=index, source=source, grid=grid, seeds=list(seeds), ci_over="identities",
        identities=len(np.unique(labels)), images=len(images))
