"""The findings' statistics on constructed cases with known answers, channel choice, and emergence."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from toolkit.probe.channels import pick, rank_channels
from toolkit.probe.compare import correlation
from toolkit.probe.emergence import depth_order, fixed_channels, onset, settled_from
from toolkit.probe.findings import colour_share, frequency_centroid
from toolkit.probe.invariance import invariance_index


def _orthonormal(n, d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, n)))
    return q.T


@pytest.mark.parametrize("a, b", [(1.0, 0.0), (1.0, 1.0), (2.0, 1.0), (0.0, 1.0)])
def test_invariance_index_known_answer(a, b):
    # Image i of person k = a * p_k + b * e_i with orthonormal p, e: within-person cosine a²/(a²+b²),
    # between-person cosine 0, so the index is exactly a²/(a²+b²).
    people, per = 4, 3
    basis = _orthonormal(people + people * per, 64)
    labels = np.repeat(np.arange(people), per)
    vectors = a * basis[labels] + b * basis[people:]
    out = invariance_index(vectors, labels)
    assert out["index"] == pytest.approx(a * a / (a * a + b * b), abs=1e-9)
    assert out["between"] == pytest.approx(0.0, abs=1e-9)
    assert out["pairs_within"] == people * 3 and out["pairs_between"] == 66 - people * 3


def test_invariance_index_with_shared_between_similarity():
    # All vectors share a common part c: within = 1, between = c²/(c²+1) -> index 1; strangers-alike -> 0.
    basis = _orthonormal(5, 16, seed=1)
    labels = np.array([0, 0, 1, 1])
    same = basis[0] + basis[1 + labels]
    assert invariance_index(same, labels)["index"] == pytest.approx(1.0)
    unrelated = basis[0] + basis[1:5]
    out = invariance_index(unrelated, labels)
    assert out["between"] == pytest.approx(0.5) and out["index"] == pytest.approx(0.0, abs=1e-12)


def test_invariance_index_needs_pairs():
    with pytest.raises(ValueError, match="at least two photos"):
        invariance_index(np.eye(3), np.array([0, 1, 2]))


@pytest.mark.parametrize("f", [1, 4, 8, 16])
def test_frequency_centroid_of_pure_stripes(f):
    x = np.arange(32)
    stripes = np.cos(2 * np.pi * f * x / 32)[None, :].repeat(32, 0)
    delta = np.repeat(stripes[None, :, :, None], 3, axis=-1)
    assert frequency_centroid(delta)[0] == pytest.approx(f / 16, rel=1e-9)


def test_colour_share():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.normal(size=(1, 8, 8, 1)), 3, axis=-1)
    assert colour_share(grey)[0] == pytest.approx(0.0, abs=1e-12)
    colour = grey * np.array([1.0, -1.0, 0.0])  # channel mean zero: all colour
    assert colour_share(colour)[0] == pytest.approx(1.0)


def test_channel_rules():
    responses = np.zeros((2, 3, 3, 10))
    responses[..., :] = np.array([5, 1, 9, 3, 7, 0, 2, 8, 6, 4], float)
    ranking = rank_channels(responses)
    assert list(ranking) == [2, 7, 4, 8, 0, 9, 3, 6, 1, 5]
    assert pick(ranking, 5, "top") == [2, 7, 4, 8, 0]
    assert pick(ranking, 3, "spread") == [2, 0, 5]  # ranks 0, 4 (4.5 rounds half to even), 9
    with pytest.raises(ValueError, match="channel rule"):
        pick(ranking, 5, "best")


def test_emergence_helpers():
    assert settled_from([0, 10, 20, 30], [0.2, 0.95, 0.5, 1.0], 0.9) is None  # only the end: not settled
    assert settled_from([0, 10, 20, 30], [0.2, 0.95, 0.93, 1.0], 0.9) == 10
    a = np.random.default_rng(0).normal(size=100)
    assert correlation(a, 3 * a + 1) == pytest.approx(1.0)
    assert correlation(a, -a) == pytest.approx(-1.0)
    assert fixed_channels(64, 5) == [0, 16, 32, 47, 63]


def test_onset_is_where_a_series_leaves_the_band_and_stays_out():
    its = [0, 10, 20, 30, 40, 50]
    assert onset(its, [False, True, False, True, True, True]) == 30  # an early excursion does not count
    assert onset(its, [False] * 5 + [True]) is None  # out only at the last snapshot: not yet persistent
    assert onset(its, [False] * 6) is None
    assert onset(its, [True] * 6) == 0


def test_onset_does_not_depend_on_the_snapshot_interval():
    # A statistic that leaves the band at iteration 137 for good (with an excursion at 40-45):
    # sampled every 1, 5 or 20 iterations the onset is the first snapshot at or after 137.
    outside = lambda it: it >= 137 or 40 <= it <= 45  # noqa: E731
    for every in (1, 5, 20):
        its = list(range(0, 301, every))
        got = onset(its, [outside(it) for it in its])
        assert 137 <= got < 137 + every


def test_depth_order():
    assert depth_order({"first": 20, "middle": 100, "last": 200}) == "reproduced"
    assert depth_order({"first": 200, "middle": 100, "last": 200}) == "not reproduced"
    assert depth_order({"first": 20, "middle": None, "last": 200}) == "inconclusive"


def test_emergence_callback_during_training(tmp_path):
    import keras

    from toolkit.probe.emergence import EmergenceCallback
    from toolkit.zoo import get_model

    model = get_model("tiny", input_size=32, embedding_dim=8)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(16, 8)).astype(np.float32)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    cb = EmergenceCallback(model, images, every=3, out_dir=tmp_path / "em", steps=3, max_images=2)
    model.fit((images.astype(np.float32) - 127.5) / 128, targets, batch_size=4, epochs=2, verbose=0,
              callbacks=[cb])
    summary = json.loads((tmp_path / "em" / "emergence.json").read_text())
    assert summary["iterations"] == [0, 3, 6, 8]  # 8 batches: snapshots at start, every 3, and the end
    assert set(summary["stages"]) == {"first", "middle", "last"}
    for stage in summary["stages"].values():
        assert len(stage["correlations"]) == 4 and stage["correlations"][-1] == pytest.approx(1.0)
        assert len(stage["frequency_centroid"]) == 4 and len(stage["outside"]) == 4
        lo, hi = stage["null_band"]["frequency_centroid"]
        assert lo < hi
        assert stage["onset"] in summary["iterations"] + [None]
        assert stage["verdict"] in ("reproduced", "not reproduced", "inconclusive")
        # Training moved the weights: the start-of-training visualisation differs from the final one.
        assert stage["correlations"][0] < 0.999
    finding = summary["finding"]
    for key in ("trained", "controls", "effect", "ci", "verdict"):
        assert set(finding[key]) >= {"first", "middle", "last"} or key == "controls"
    assert set(finding["controls"]) >= {"untrained", "pixels", "noise"}
    snaps = sorted((tmp_path / "em" / "snapshots").glob("iter_*.npz"))
    assert len(snaps) == 4
    with np.load(snaps[1]) as z:
        assert z["delta"].dtype == np.float32  # float16 would round small raw steps to 0

    # Resuming continues the iteration count (from the optimizer) and keeps the earlier snapshots.
    cb2 = EmergenceCallback(model, images, every=3, out_dir=tmp_path / "em", steps=3, max_images=2)
    model.fit((images.astype(np.float32) - 127.5) / 128, targets, batch_size=4, epochs=1, verbose=0,
              callbacks=[cb2])
    summary = json.loads((tmp_path / "em" / "emergence.json").read_text())
    assert summary["iterations"] == [0, 3, 6, 8, 9, 12]


def test_final_snapshot_is_of_the_saved_model(tmp_path):
    from toolkit.probe.ascent import Ascender
    from toolkit.probe.emergence import EmergenceCallback
    from toolkit.zoo import get_model

    model = get_model("tiny", input_size=32, embedding_dim=8)
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    cb = EmergenceCallback(model, images, every=100, out_dir=tmp_path, steps=2, max_images=2)
    cb._snapshot()
    saved = get_model("tiny", input_size=32, embedding_dim=8)  # other weights, as after re-estimation
    cb.finalize(saved)
    expected = Ascender(saved, cb.plan).run().final_images - cb.plan.images[:, None]
    np.testing.assert_allclose(cb._load(cb.snapshots[-1]), expected, atol=1e-6)


def test_training_run_ends_emergence_on_the_saved_model(tmp_path):
    """Through `toolkit.train`: the last snapshot is the ascent on the model as saved (after batch-norm
    re-estimation), and snapshot iterations are the optimizer's."""
    from toolkit.data import synthesize
    from toolkit.modelfile import load_face_model
    from toolkit.probe.ascent import Ascender
    from toolkit.probe.emergence import EmergenceCallback
    from toolkit.train import train
    from toolkit.training.config import TrainConfig

    data = synthesize(tmp_path / "faces", identities=4, images_per_identity=6, size=32, progress=False)
    config = TrainConfig(model="tiny", input_size=32, embedding_dim=16, epochs=2, batch_size=8,
                         learning_rate=3e-3, scale=16.0, margin=0.2, warmup_epochs=0.5, data=str(data),
                         seed=0, bn_tolerance=-1.0)  # always try re-estimating the batch-norm statistics
    made = []

    def factory(embedding, train_set, run_dir):
        made.append(EmergenceCallback(embedding, train_set.images, every=2, out_dir=tmp_path / "em", steps=2,
                                      max_images=2))
        return made[0]

    result = train(config, tmp_path / "run", extra_callbacks=[factory], progress=False, log=lambda m: None)
    cb = made[0]
    assert cb.snapshots == [0, 2, 4, 6]  # 24 images / 8 = 3 batches per epoch, 2 epochs
    saved, _ = load_face_model(result.model_path)
    expected = Ascender(saved, cb.plan).run().final_images - cb.plan.images[:, None]
    np.testing.assert_allclose(cb._load(6), expected, atol=1e-5)


def test_verdict_rules():
    from toolkit.probe.controls import bootstrap_images, seed_band, verdict

    assert seed_band([1.0, 2.0, 3.0]) == pytest.approx(4.303 * 1.0 * np.sqrt(4 / 3))
    assert seed_band([5.0]) == 0.0
    seeds = [0.50, 0.51, 0.49]  # band 0.043
    assert verdict(0.70, seeds, [0.15, 0.25], +1) == "reproduced"
    assert verdict(0.70, seeds, [0.15, 0.25], -1) == "not reproduced"  # clearly the other way
    assert verdict(0.505, seeds, [0.001, 0.01], +1) == "not reproduced"  # among the seeds
    assert verdict(0.53, seeds, [0.01, 0.05], +1) == "inconclusive"  # beyond the seeds, inside the band
    assert verdict(0.60, seeds, [-0.05, 0.25], +1) == "inconclusive"  # interval straddles 0
    rng = np.random.default_rng(0)
    lo, hi = bootstrap_images(rng.normal(1.0, 0.1, 200), rng.normal(0.0, 0.1, (3, 200)))
    assert lo < 1.0 < hi and hi - lo < 0.1
