"""FaceSet: a labelled set of face images held in memory, with what was skipped on the way in."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value, so s2 < s10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


@dataclass
class FaceSet:
    """Face images with identity labels.

    ``images`` uint8 (N, H, W, 3) RGB; ``labels`` int64 (N,) index into ``names``; ``paths`` one source file
    per image; ``skipped`` (path, reason) for files that could not be used; ``empty_identities`` folders
    without a usable image; ``source_sizes`` (N, 2) original (height, width); ``crop_fallbacks`` paths where
    face detection found nothing and a centre crop was used.
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    empty_identities: list[str] = field(default_factory=list)
    source_sizes: np.ndarray | None = None
    crop_fallbacks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, np.int64)
        n = len(self.labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"FaceSet images must be uint8 (N, H, W, 3), got {self.images.dtype} "
                             f"{self.images.shape}")
        if len(self.images) != n or len(self.paths) != n:
            raise ValueError(f"FaceSet has {len(self.images)} images, {n} labels and {len(self.paths)} "
                             "paths; they must match one to one")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.names)):
            raise ValueError(f"FaceSet labels must index its {len(self.names)} names")
        if self.source_sizes is None:
            self.source_sizes = np.tile(np.asarray(self.images.shape[1:3], np.int64), (n, 1))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray) -> FaceSet:
        """The images at ``indices``; labels re-indexed densely over the identities present, in name order."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        present = np.unique(self.labels[idx])
        remap = np.full(len(self.names), -1, np.int64)
        remap[present] = np.arange(len(present))
        paths = [self.paths[i] for i in idx]
        kept = set(paths)
        return FaceSet(
            images=self.images[idx],
            labels=remap[self.labels[idx]],
            names=[self.names[i] for i in present],
            paths=paths,
            skipped=list(self.skipped),
            empty_identities=list(self.empty_identities),
            source_sizes=self.source_sizes[idx],
            crop_fallbacks=[p for p in self.crop_fallbacks if p in kept],
        )

    def select(self, names: Iterable[str]) -> FaceSet:
        """All images of the named identities (kept in this set's name order)."""
        wanted = list(names)
        unknown = sorted(set(wanted) - set(self.names), key=natural_key)
        if unknown:
            raise ValueError(f"unknown identities {unknown}; this set has {len(self.names)} identities "
                             f"({', '.join(self.names[:5])}{', ...' if len(self.names) > 5 else ''})")
        keep = np.isin(self.labels, [self.names.index(n) for n in wanted])
        return self.subset(np.flatnonzero(keep))

    def counts(self) -> dict[str, int]:
        """Images per identity."""
        per_label = np.bincount(self.labels, minlength=len(self.names))
        return {name: int(c) for name, c in zip(self.names, per_label, strict=True)}

    def summary(self) -> dict:
        """JSON-ready description: counts, sizes, and everything that was skipped."""
        counts = self.counts()
        sizes = Counter(f"{w}x{h}" for h, w in self.source_sizes.tolist())
        return {
            "identities": len(self.names),
            "images": len(self),
            "image_shape": list(self.images.shape[1:]),
            "images_per_identity": counts,
            "min_images_per_identity": min(counts.values(), default=0),
            "max_images_per_identity": max(counts.values(), default=0),
            "source_sizes": dict(sizes.most_common()),
            "skipped": len(self.skipped),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
            "empty_identities": list(self.empty_identities),
            "crop_fallbacks": len(self.crop_fallbacks),
        }
