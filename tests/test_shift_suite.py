"""The shift suite: deterministic by seed, and every corruption moves the faces more at higher severity."""

import numpy as np
import pytest

from toolkit.data import load_identity_folders, synthesize
from toolkit.data.shift import CORRUPTIONS, SEVERITIES, corrupt, shift_suite


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = synthesize(tmp_path_factory.mktemp("faces"), identities=2, images_per_identity=3, size=64,
                        seed=3, progress=False)
    return load_identity_folders(folder, image_size=64, progress=False).images


def test_same_seed_same_images_other_seed_other_noise(faces):
    for name in CORRUPTIONS:
        assert np.array_equal(corrupt(faces, name, 2, seed=5), corrupt(faces, name, 2, seed=5)), name
    assert not np.array_equal(corrupt(faces, "gaussian_noise", 2, seed=5),
                              corrupt(faces, "gaussian_noise", 2, seed=6))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_changes_images_more_at_higher_severity(faces, name):
    changes = []
    for severity in SEVERITIES:
        out = corrupt(faces, name, severity)
        assert out.shape == faces.shape and out.dtype == np.uint8
        changes.append(float(np.mean(np.abs(out.astype(float) - faces))))
    assert changes[0] > 1.0, (name, changes)
    assert changes[0] < changes[1] < changes[2], (name, changes)


def test_suite_order_and_bad_input(faces):
    got = [(n, s) for n, s, _ in shift_suite(faces[:2], names=["jpeg", "mask"], severities=(1, 3))]
    assert got == [("jpeg", 1), ("jpeg", 3), ("mask", 1), ("mask", 3)]
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(faces, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(faces, "jpeg", 4)
