"""Synthetic faces: determinism, layout, and hard enough that raw pixels do badly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolkit.data import FaceSet, load_identity_folders, split_by_image, synthesize
from toolkit.data.synth import pixel_linear_accuracy


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_synthesis_is_deterministic_by_seed(tmp_path: Path) -> None:
    def make(name: str, seed: int, identities: int = 3, images: int = 2) -> dict[str, bytes]:
        return _files(synthesize(tmp_path / name, identities=identities, images_per_identity=images, size=32,
                                 seed=seed, progress=False))

    a, b, c = make("a", 5), make("b", 5), make("c", 6)
    assert list(a) == ["id000/000.png", "id000/001.png", "id001/000.png", "id001/001.png", "id002/000.png",
                       "id002/001.png"]
    assert a == b
    assert all(a[k] != c[k] for k in a)
    # a person looks the same whatever the dataset size
    d = make("d", 5, identities=5, images=3)
    assert all(d[k] == a[k] for k in a)


def test_synthesis_reuses_replaces_and_refuses(tmp_path: Path) -> None:
    out = synthesize(tmp_path / "s", identities=2, images_per_identity=2, size=32, progress=False)
    stamp = (out / "id000" / "000.png").stat().st_mtime_ns
    synthesize(out, identities=2, images_per_identity=2, size=32, progress=False)
    assert (out / "id000" / "000.png").stat().st_mtime_ns == stamp  # same settings: reused
    synthesize(out, identities=3, images_per_identity=1, size=32, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["id000", "id001", "id002", "synth.json"]
    assert len(list(out.rglob("*.png"))) == 3  # earlier images replaced, none left over
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        synthesize(foreign, progress=False)
    with pytest.raises(ValueError, match="at least 2 identities"):
        synthesize(tmp_path / "x", identities=1, progress=False)


def test_synthetic_images_vary_within_and_between_people(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "s", identities=4, images_per_identity=4, size=48, progress=False)
    fs = load_identity_folders(root, image_size=48, progress=False)
    assert fs.names == ["id000", "id001", "id002", "id003"] and len(fs) == 16 and not fs.skipped
    x = fs.images.astype(np.float64)
    assert x.std() > 30  # real pictures, not flat fills
    diffs = np.abs(x[:, None] - x[None]).mean(axis=(2, 3, 4))
    assert diffs[~np.eye(16, dtype=bool)].min() > 3  # no two images alike


def test_pixel_linear_classifier_solves_an_easy_set() -> None:
    # a sanity check on the yardstick itself: aligned, noisy copies of one template per person
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (5, 16, 16, 3))
    labels = np.repeat(np.arange(5), 6)
    images = np.clip(templates[labels] + rng.normal(0, 20, (30, 16, 16, 3)), 0, 255).astype(np.uint8)
    fs = FaceSet(images, labels, [f"p{k}" for k in range(5)], [f"p{k}/{i}" for i, k in enumerate(labels)])
    train, test = split_by_image(fs, 2, seed=0)
    assert pixel_linear_accuracy(train, test) == 1.0


def test_pixel_linear_classifier_does_badly_on_synthetic_faces(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "s", identities=20, images_per_identity=10, size=32, progress=False)
    train, test = split_by_image(load_identity_folders(root, image_size=32, progress=False), 2, seed=0)
    acc = pixel_linear_accuracy(train, test)
    assert 1 / 20 < acc < 0.5, acc  # above chance, far below a solved task
    with pytest.raises(ValueError, match="share their identities"):
        pixel_linear_accuracy(train, test.select(test.names[:5]))
