"""LFW-style verification pairs: balanced genuine/impostor pairs in k folds, saved so runs compare."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.files import read_json

from ..atomic import write_json

PAIRS_SCHEMA = "faceprobe.pairs/1"
# Below this many images every impostor pair is enumerated; above it they are drawn at random.
_ENUMERATE_LIMIT = 2000


@dataclass
class Pairs:
    """Pairs of indices into a FaceSet; ``issame`` marks genuine pairs; ``fold`` is each pair's fold."""

    left: np.ndarray
    right: np.ndarray
    issame: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self) else 0


def _genuine_pairs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """All same-identity pairs, interleaved across identities so any prefix covers people evenly."""
    per_identity = []
    for k in rng.permutation(np.unique(labels)):
        members = np.flatnonzero(labels == k)
        if len(members) >= 2:
            i, j = np.triu_indices(len(members), 1)
            per_identity.append(rng.permutation(np.stack([members[i], members[j]], 1)))
    if not per_identity:
        return np.zeros((0, 2), np.int64)
    longest = max(len(p) for p in per_identity)
    rounds = [p[r] for r in range(longest) for p in per_identity if r < len(p)]
    return np.asarray(rounds, np.int64)


def _impostor_pairs(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct different-identity pairs (i < j)."""
    n = len(labels)
    if n <= _ENUMERATE_LIMIT:
        i, j = np.triu_indices(n, 1)
        keep = labels[i] != labels[j]
        pool = np.stack([i[keep], j[keep]], 1)
        if len(pool) < count:
            raise ValueError(f"only {len(pool)} impostor pairs exist, {count} were asked for")
        return pool[rng.choice(len(pool), count, replace=False)]
    found: dict[tuple[int, int], None] = {}
    for _ in range(100):
        draw = rng.integers(0, n, size=(2 * count, 2))
        for a, b in np.sort(draw, axis=1).tolist():
            if labels[a] != labels[b]:
                found.setdefault((a, b))
                if len(found) == count:
                    return np.asarray(list(found), np.int64)
    raise ValueError(f"could not draw {count} distinct impostor pairs; ask for fewer pairs")


def make_pairs(labels: np.ndarray, n_folds: int = 10, pairs_per_fold: int | None = None,
               seed: int = 0) -> Pairs:
    """Balanced verification pairs: each fold holds equally many genuine and impostor pairs, none repeated.

    ``pairs_per_fold`` (even) counts both kinds together; by default every fold gets as many genuine pairs as
    the identities with two or more images allow, split evenly across folds.
    """
    labels = np.asarray(labels, np.int64)
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    if len(np.unique(labels)) < 2:
        raise ValueError("verification pairs need at least 2 identities")
    rng = np.random.default_rng(seed)
    genuine = _genuine_pairs(labels, rng)
    if pairs_per_fold is None:
        per_kind = len(genuine) // n_folds
    elif pairs_per_fold < 2 or pairs_per_fold % 2:
        raise ValueError(f"pairs_per_fold must be an even number of at least 2, got {pairs_per_fold}")
    else:
        per_kind = pairs_per_fold // 2
    if per_kind == 0 or per_kind * n_folds > len(genuine):
        need = max(per_kind, 1)
        raise ValueError(f"{n_folds} folds of {need} genuine pairs need {need * n_folds} genuine pairs, but "
                         f"the identities with 2 or more images give only {len(genuine)}; "
                         "use more images per identity or more identities (or, in `evaluate`, fewer --folds)")
    total = per_kind * n_folds
    genuine = genuine[:total]
    impostor = _impostor_pairs(labels, total, rng)
    fold = np.repeat(np.arange(n_folds), per_kind)
    both = np.concatenate([genuine[rng.permutation(total)], impostor])
    same = np.concatenate([np.ones(total, bool), np.zeros(total, bool)])
    folds = np.concatenate([fold, fold])
    order = np.lexsort((rng.random(2 * total), folds))  # fold by fold, kinds mixed within a fold
    both = np.sort(both, axis=1)
    return Pairs(left=both[order, 0], right=both[order, 1], issame=same[order], fold=folds[order])


def _relative(path: str) -> str:
    # identity/file: the part of a path that stays the same wherever the dataset folder is moved
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def save_pairs(path: str | Path, pairs: Pairs, paths: Sequence[str]) -> None:
    """Write pairs as JSON naming images by ``identity/file``, so the file survives moving the dataset."""
    rel = [_relative(p) for p in paths]
    if len(set(rel)) != len(rel):
        raise ValueError("two images share an identity/file name; pairs cannot name them unambiguously")
    write_json(path, {
        "schema": PAIRS_SCHEMA,
        "n_folds": pairs.n_folds,
        "pairs": [{"left": rel[a], "right": rel[b], "issame": bool(s), "fold": int(f)}
                  for a, b, s, f in zip(pairs.left.tolist(), pairs.right.tolist(), pairs.issame.tolist(),
                                        pairs.fold.tolist(), strict=True)],
    })


def load_pairs(path: str | Path, paths: Sequence[str]) -> Pairs:
    """Read a pairs file and map its images onto ``paths`` (a FaceSet's), which must contain all of them."""
    doc = read_json(path, "pairs file")
    if doc.get("schema") != PAIRS_SCHEMA:
        raise ValueError(f"{path} is not a faceprobe pairs file (schema {doc.get('schema')!r}, "
                         f"expected {PAIRS_SCHEMA!r})")
    index = {_relative(p): i for i, p in enumerate(paths)}
    entries = doc["pairs"]
    missing = sorted({e[k] for e in entries for k in ("left", "right")} - set(index))
    if missing:
        raise ValueError(f"{len(missing)} images named in {path} are not in the dataset "
                         f"(first: {missing[0]}); load the dataset the pairs were made for")
    return Pairs(
        left=np.array([index[e["left"]] for e in entries], np.int64),
        right=np.array([index[e["right"]] for e in entries], np.int64),
        issame=np.array([e["issame"] for e in entries], bool),
        fold=np.array([e["fold"] for e in entries], np.int64),
    )
