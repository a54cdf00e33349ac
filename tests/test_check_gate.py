"""Check metrics against hand-computed values, and thresholds that change the verdict."""

import math

import numpy as np
import pytest

from toolkit.check.gate import judge, load_thresholds
from toolkit.check.metrics import rmse_over_scale, sqnr_db, tap_errors
from toolkit.probe.compare import correlation, cosine


def test_sqnr_known_values():
    ref = np.ones(100)
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise = 1% of the power
    assert math.isinf(sqnr_db(ref, ref))


def test_uniform_rounding_gives_the_ideal_rmse_over_scale():
    x = np.random.default_rng(0).uniform(-10, 10, 200_000)
    scale = 0.1
    q = np.round(x / scale) * scale
    assert rmse_over_scale(x, q, scale) == pytest.approx(1 / math.sqrt(12), rel=0.01)
    assert rmse_over_scale(x, q, None) is None
    e = tap_errors(x, q, scale)
    assert e["cosine"] > 0.999 and e["sqnr_db"] > 40


def test_cosine_and_correlation():
    a = np.array([1.0, 2.0, 3.0])
    assert cosine(a, 2 * a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert correlation(a, a + 5) == pytest.approx(1.0)
    assert correlation(a, np.ones(3)) == 0.0


def test_thresholds_file_overrides_and_changes_the_verdict(tmp_path):
    measured = {"accuracy_drop_pp": 0.8, "worst_tap_sqnr_db": 15.0}
    default = {v.name: v.passed for v in judge(measured, load_thresholds())}
    assert default == {"accuracy_drop_pp": False, "worst_tap_sqnr_db": True}
    f = tmp_path / "t.toml"
    f.write_text("[identities]\nmax_accuracy_drop_pp = 1.0\n[taps]\nmin_sqnr_db = 20\n")
    relaxed = {v.name: v.passed for v in judge(measured, load_thresholds(f))}
    assert relaxed == {"accuracy_drop_pp": True, "worst_tap_sqnr_db": False}


def test_bad_thresholds_files_are_named(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text("[tapz]\nmin_sqnr_db = 1\n")
    with pytest.raises(ValueError, match=r"unknown section \[tapz\]"):
        load_thresholds(f)
    f.write_text("[taps]\nmin_snr = 1\n")
    with pytest.raises(ValueError, match="unknown key 'min_snr'"):
        load_thresholds(f)
    f.write_text("[taps\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_thresholds(f)
    with pytest.raises(FileNotFoundError):
        load_thresholds(tmp_path / "missing.toml")


def test_accuracy_drop_comes_with_its_standard_error_over_pairs():
    """Identical embeddings: no drop, no error. Noise on the quantized embeddings of a separable set: the
    standard error is the paired one, sd(correct_float - correct_quantized) / sqrt(pairs)."""
    from toolkit.check.levels import identity_level
    from toolkit.data.pairs import make_pairs

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 5)
    centres = rng.normal(size=(20, 16))
    emb = centres[labels] + 0.6 * rng.normal(size=(100, 16))
    pairs = make_pairs(labels, n_folds=5, seed=0)
    same = identity_level(emb, emb, labels, pairs)
    assert same["accuracy_drop_pp"] == 0.0 and same["accuracy_drop_se_pp"] == 0.0
    noisy = identity_level(emb, emb + 0.8 * rng.normal(size=emb.shape), labels, pairs)
    sf = np.asarray(noisy["pair_scores"]["float"])
    sq = np.asarray(noisy["pair_scores"]["quantized"])
    issame = np.asarray(noisy["pair_scores"]["issame"])
    t = noisy["threshold"]
    diff = ((sf > t) == issame).astype(float) - ((sq > t) == issame)
    assert diff.any()
    assert noisy["accuracy_drop_se_pp"] == pytest.approx(100 * diff.std(ddof=1) / np.sqrt(len(diff)))
    assert 0 < noisy["accuracy_drop_se_pp"] < 10
