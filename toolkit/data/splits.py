"""Train/evaluation splits: by identity (open set) and by image (closed set), deterministic by seed."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .faceset import FaceSet


def split_by_identity(fs: FaceSet, eval_names: Iterable[str] | None = None, eval_fraction: float = 0.25,
                      seed: int = 0) -> tuple[FaceSet, FaceSet]:
    """Open set: evaluation people never appear in training.

    ``eval_names`` fixes the evaluation identities; otherwise ``eval_fraction`` of them are drawn by seed.
    Both sides need at least two identities.
    """
    if eval_names is not None:
        chosen = list(dict.fromkeys(eval_names))
        unknown = [n for n in chosen if n not in fs.names]
        if unknown:
            raise ValueError(f"evaluation identities {unknown} are not in the dataset")
    else:
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
        n_eval = int(round(eval_fraction * len(fs.names)))
        order = np.random.default_rng(seed).permutation(len(fs.names))
        chosen = [fs.names[i] for i in order[:n_eval]]
    rest = [n for n in fs.names if n not in set(chosen)]
    if len(chosen) < 2 or len(rest) < 2:
        raise ValueError(f"an identity split of {len(fs.names)} identities gave {len(rest)} for training and "
                         f"{len(chosen)} for evaluation; each side needs at least 2 (change eval_fraction "
                         "or eval_names)")
    return fs.select(rest), fs.select(chosen)


def split_by_image(fs: FaceSet, test_per_identity: int = 2, seed: int = 0) -> tuple[FaceSet, FaceSet]:
    """Closed set: ``test_per_identity`` images of every identity held out; both sides share the labels."""
    if test_per_identity < 1:
        raise ValueError(f"test_per_identity must be at least 1, got {test_per_identity}")
    counts = np.bincount(fs.labels, minlength=len(fs.names))
    short = [n for n, c in zip(fs.names, counts, strict=True) if c <= test_per_identity]
    if short:
        raise ValueError(f"{len(short)} identities have at most {test_per_identity} images, so none would be "
                         f"left for training: {', '.join(short[:10])}; lower test_per_identity or drop them "
                         "with FaceSet.select")
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(fs.labels == k))[:test_per_identity]
                           for k in range(len(fs.names))])
    train = np.setdiff1d(np.arange(len(fs)), test)
    return fs.subset(train), fs.subset(np.sort(test))
