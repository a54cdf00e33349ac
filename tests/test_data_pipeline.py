"""tf.data pipeline: shapes, dtypes, value range, order, augmentation and seeds."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.data import make_dataset, normalize, valid_range

tf = pytest.importorskip("tensorflow")


def _images(n: int = 10, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_evaluation_keeps_order_and_every_image() -> None:
    images, labels = _images(), np.arange(10) % 3
    batches = list(make_dataset(images, labels, batch_size=4, training=False).as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (10, 24, 24, 3)
    assert np.array_equal(y, labels)
    np.testing.assert_allclose(x, normalize(images), atol=1e-6)


def test_training_batches_are_full_augmented_and_in_range() -> None:
    images, labels = _images(), np.arange(10)
    ds = make_dataset(images, labels, batch_size=4, training=True, seed=1)
    batches = list(ds.as_numpy_iterator())
    assert [x.shape for x, _ in batches] == [(4, 24, 24, 3)] * 2  # partial batch dropped
    lo, hi = valid_range()
    ref = normalize(images)
    for x, y in batches:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6
        assert len(set(y.tolist())) == 4
        changed = np.abs(x - ref[y]).mean(axis=(1, 2, 3))
        assert np.all(changed > 0.01)  # every image augmented


def test_training_without_augmentation_only_shuffles() -> None:
    images, labels = _images(), np.arange(10)
    for x, y in make_dataset(images, labels, batch_size=5, training=True, augment=False).as_numpy_iterator():
        np.testing.assert_allclose(x, normalize(images)[y], atol=1e-6)


def test_augmentation_is_seeded_and_differs_per_epoch() -> None:
    images, labels = _images(), np.arange(10)

    def epochs(seed: int, n: int = 2) -> list[np.ndarray]:
        ds = make_dataset(images, labels, batch_size=10, training=True, seed=seed)
        return [next(iter(ds))[0].numpy() for _ in range(n)]

    a, b = epochs(3), epochs(3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[0], a[1])
    assert not np.allclose(epochs(4, 1)[0], a[0])


def test_mild_augmentation_changes_images_less_than_standard() -> None:
    images, labels = _images(n=32, size=32), np.arange(32)
    ref = normalize(images)

    def mean_change(augment: bool | str) -> float:
        x, y = next(iter(make_dataset(images, labels, batch_size=32, training=True, seed=5, augment=augment)))
        return float(np.abs(x.numpy() - ref[y.numpy()]).mean())

    # Same seed, so the same flips and draws: only the ranges differ.
    standard, mild = mean_change(True), mean_change("mild")
    assert mean_change("standard") == pytest.approx(standard)
    assert 0.01 < mild < standard


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        make_dataset(np.zeros((2, 8, 8, 3), np.float32), [0, 1], 2, training=False)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        make_dataset(np.zeros((2, 8, 8, 3), np.uint8), [0, 1, 2], 2, training=False)
    with pytest.raises(ValueError, match="augment must be true, false or one of"):
        make_dataset(np.zeros((2, 8, 8, 3), np.uint8), [0, 1], 2, training=True, augment="heavy")
