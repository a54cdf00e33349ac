"""Open- and closed-set splits, verification pairs and the pairs file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.data import FaceSet, Pairs, load_pairs, make_pairs, save_pairs, split_by_identity, split_by_image


def _faceset(n_ids: int = 12, per_id: int = 6) -> FaceSet:
    n = n_ids * per_id
    images = (np.arange(n) % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    labels = np.repeat(np.arange(n_ids), per_id)
    names = [f"p{k}" for k in range(n_ids)]
    paths = [f"/data/{names[k]}/{i}.png" for i, k in enumerate(labels)]
    return FaceSet(images, labels, names, paths)


def test_split_by_identity_is_disjoint_complete_and_seeded() -> None:
    fs = _faceset()
    train, test = split_by_identity(fs, eval_fraction=0.25, seed=3)
    assert len(test.names) == 3 and len(train.names) == 9
    assert set(train.names).isdisjoint(test.names)
    assert sorted(train.paths + test.paths) == sorted(fs.paths)
    again = split_by_identity(fs, eval_fraction=0.25, seed=3)[1]
    assert again.names == test.names and again.paths == test.paths
    assert {tuple(split_by_identity(fs, seed=s)[1].names) for s in range(6)} != {tuple(test.names)}
    # labels are dense within each side and still point at the right people
    assert test.labels.max() == 2 and all(test.names[lab] in p for lab, p in zip(test.labels, test.paths,
                                                                                  strict=True))


def test_split_by_identity_with_named_people() -> None:
    fs = _faceset()
    train, test = split_by_identity(fs, eval_names=["p11", "p10", "p9"])
    assert test.names == ["p9", "p10", "p11"] and "p9" not in train.names
    with pytest.raises(ValueError, match="not in the dataset"):
        split_by_identity(fs, eval_names=["p99", "p1"])
    with pytest.raises(ValueError, match="at least 2"):
        split_by_identity(fs, eval_names=["p1"])


def test_split_by_image_is_disjoint_and_keeps_labels() -> None:
    fs = _faceset()
    train, test = split_by_image(fs, test_per_identity=2, seed=1)
    assert set(train.paths).isdisjoint(test.paths)
    assert sorted(train.paths + test.paths) == sorted(fs.paths)
    assert train.names == test.names == fs.names
    assert np.bincount(test.labels).tolist() == [2] * 12 and np.bincount(train.labels).tolist() == [4] * 12
    assert split_by_image(fs, 2, seed=1)[1].paths == test.paths
    assert split_by_image(fs, 2, seed=2)[1].paths != test.paths
    with pytest.raises(ValueError, match="at most 6 images"):
        split_by_image(fs, test_per_identity=6)


def _check_pairs(pairs: Pairs, labels: np.ndarray, n_folds: int) -> None:
    assert np.array_equal(pairs.issame, labels[pairs.left] == labels[pairs.right])
    assert np.all(pairs.left < pairs.right)
    keys = set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))
    assert len(keys) == len(pairs)  # no pair twice
    assert pairs.n_folds == n_folds
    for f in range(n_folds):
        same = pairs.issame[pairs.fold == f]
        assert same.sum() == (~same).sum() > 0


def test_pairs_are_balanced_per_fold_and_unique() -> None:
    labels = _faceset(10, 10).labels
    pairs = make_pairs(labels, n_folds=10, seed=0)
    _check_pairs(pairs, labels, 10)
    assert len(pairs) == 900  # all 450 genuine pairs (10 x C(10,2)) and as many impostors
    # genuine pairs cover everyone evenly
    assert np.bincount(labels[pairs.left[pairs.issame]], minlength=10).tolist() == [45] * 10


def test_pairs_per_fold_seed_and_errors() -> None:
    labels = np.repeat(np.arange(30), 4)
    pairs = make_pairs(labels, n_folds=5, pairs_per_fold=40, seed=7)
    _check_pairs(pairs, labels, 5)
    assert len(pairs) == 200
    genuine_ids = np.unique(labels[pairs.left[pairs.issame]])
    assert len(genuine_ids) == 30  # 100 of 180 genuine pairs, spread over all people
    same = make_pairs(labels, n_folds=5, pairs_per_fold=40, seed=7)
    assert np.array_equal(same.left, pairs.left) and np.array_equal(same.right, pairs.right)
    other = make_pairs(labels, n_folds=5, pairs_per_fold=40, seed=8)
    assert not np.array_equal(other.left, pairs.left)
    with pytest.raises(ValueError, match="even"):
        make_pairs(labels, pairs_per_fold=7)
    with pytest.raises(ValueError, match="give only 180"):
        make_pairs(labels, n_folds=10, pairs_per_fold=40)
    with pytest.raises(ValueError, match="2 or more images"):
        make_pairs(np.arange(20), n_folds=2)  # nobody has a second image
    with pytest.raises(ValueError, match="at least 2 identities"):
        make_pairs(np.zeros(10, np.int64))


def test_pairs_on_a_large_set_draw_impostors_at_random() -> None:
    labels = np.random.default_rng(0).integers(0, 500, 5000)
    pairs = make_pairs(labels, n_folds=10, pairs_per_fold=600, seed=0)
    _check_pairs(pairs, labels, 10)
    assert len(pairs) == 6000


def test_pairs_file_round_trip_survives_reordering(tmp_path: Path) -> None:
    fs = _faceset(6, 5)
    pairs = make_pairs(fs.labels, n_folds=3, seed=0)
    path = tmp_path / "pairs.json"
    save_pairs(path, pairs, fs.paths)
    doc = json.loads(path.read_text())
    assert doc["schema"] == "faceprobe.pairs/1" and doc["pairs"][0]["left"].count("/") == 1  # relative
    back = load_pairs(path, fs.paths)
    for field in ("left", "right", "issame", "fold"):
        assert np.array_equal(getattr(back, field), getattr(pairs, field))
    # the same files listed in another order (or under another root) map back to the same images
    order = np.random.default_rng(1).permutation(len(fs))
    moved = [fs.paths[i].replace("/data/", "/elsewhere/") for i in order]
    remapped = load_pairs(path, moved)
    assert [moved[i] for i in remapped.left] == [fs.paths[i].replace("/data/", "/elsewhere/")
                                                  for i in pairs.left]
    with pytest.raises(ValueError, match="not in the dataset"):
        load_pairs(path, fs.paths[:10])
    path.write_text(json.dumps({"schema": "other", "pairs": []}))
    with pytest.raises(ValueError, match="not a faceprobe pairs file"):
        load_pairs(path, fs.paths)
