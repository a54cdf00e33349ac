"""Verification and identification metrics against hand-made scores with known answers."""

import numpy as np
import pytest

from toolkit import evaluate


def test_auc_and_eer_on_hand_made_scores():
    # 14 of the 16 genuine/impostor comparisons are won by the genuine pair; at t=0.5 one of four
    # impostors is accepted and one of four genuine pairs rejected, so FAR = FRR = 25 %.
    genuine = [0.9, 0.8, 0.7, 0.3]
    impostor = [0.6, 0.4, 0.2, 0.1]
    scores = np.array(genuine + impostor)
    issame = np.array([True] * 4 + [False] * 4)
    assert evaluate.roc_auc(scores, issame) == pytest.approx(14 / 16)
    assert evaluate.equal_error_rate(scores, issame) == pytest.approx(0.25)


def test_auc_counts_ties_as_half():
    scores = np.array([0.5, 0.5, 0.9, 0.1])
    issame = np.array([True, False, True, False])
    # genuine {0.5, 0.9} vs impostor {0.5, 0.1}: wins 0.5>0.1, 0.9>0.5, 0.9>0.1, tie 0.5=0.5.
    assert evaluate.roc_auc(scores, issame) == pytest.approx(3.5 / 4)


def test_perfect_and_inverted_separation():
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    issame = np.array([True, True, False, False])
    assert evaluate.roc_auc(scores, issame) == 1.0
    assert evaluate.equal_error_rate(scores, issame) == 0.0
    assert evaluate.roc_auc(scores, ~issame) == 0.0
    assert evaluate.equal_error_rate(scores, ~issame) == 1.0


def test_eer_interpolates_between_roc_points():
    # Genuine 0.9, 0.6, 0.3; impostor 0.8, 0.5, 0.2, 0.1.  Along the sweep (FAR, FRR) goes
    # (0, 2/3) -> (1/4, 2/3) -> (1/4, 1/3) -> (1/2, 1/3): the crossing lies on the last segment at 1/3.
    scores = np.array([0.9, 0.6, 0.3, 0.8, 0.5, 0.2, 0.1])
    issame = np.array([True, True, True, False, False, False, False])
    assert evaluate.equal_error_rate(scores, issame) == pytest.approx(1 / 3)


def test_best_threshold_maximises_accuracy_and_skips_ties():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7])
    issame = np.array([False, False, True, False, True, True])
    t, acc = evaluate.best_threshold(scores, issame)
    assert acc == pytest.approx(5 / 6)
    assert np.mean((scores > t) == issame) == pytest.approx(acc)
    # Tied scores with different labels cannot be split: the best is to accept or reject both.
    t, acc = evaluate.best_threshold(np.array([0.5, 0.5, 0.9]), np.array([True, False, True]))
    assert acc == pytest.approx(2 / 3)
    assert t < 0.5


def test_kfold_accuracy_uses_threshold_from_other_folds():
    # Folds 0 and 1 separate between 0.35 and 0.6; fold 2 puts every genuine score at 0.45, so its
    # threshold (learned on folds 0-1: 0.475) rejects them all, though one fitted on fold 2 would not.
    scores = np.array([0.8, 0.7, 0.3, 0.2, 0.9, 0.6, 0.35, 0.1, 0.45, 0.45, 0.3, 0.2])
    issame = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.repeat([0, 1, 2], 4)
    res = evaluate.verification_metrics(scores, issame, folds)
    assert res["fold_accuracies"][0] == 1.0
    assert res["fold_accuracies"][1] == 1.0
    assert res["fold_accuracies"][2] == 0.5
    assert res["verification_accuracy"] == pytest.approx(2.5 / 3)
    assert res["pairs"] == 12 and res["genuine_pairs"] == 6 and res["folds"] == 3


def test_tar_at_far_only_where_impostors_suffice():
    rng = np.random.default_rng(0)
    impostor = rng.normal(0.0, 0.1, 200)
    genuine = np.r_[np.full(50, 1.0), np.full(50, -1.0)]  # half far above, half far below
    scores = np.r_[genuine, impostor]
    issame = np.r_[np.ones(100, bool), np.zeros(200, bool)]
    tar = evaluate.tar_at_far(scores, issame)
    assert set(tar) == {"1e-01", "1e-02"}  # 200 impostors cannot resolve FAR 1e-3
    assert tar["1e-01"] == pytest.approx(0.5)
    # Lower a genuine half to sit just above the 5th-highest impostor: accepted at FAR 1e-1 (20 allowed),
    # rejected at 1e-2 (2 allowed).
    fifth = np.sort(impostor)[-5]
    scores[50:100] = fifth + 1e-9
    tar = evaluate.tar_at_far(scores, issame)
    assert tar["1e-01"] == pytest.approx(1.0)
    assert tar["1e-02"] == pytest.approx(0.5)


def test_rank1_on_constructed_embeddings():
    # Two tight clusters per identity, except image 4 which lies nearest identity 0.
    emb = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99], [0.95, 0.31], [-0.7, 0.7]], float)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 1, 2])  # identity 2 has one image: not a query
    assert evaluate.rank1_accuracy(emb, labels) == pytest.approx(4 / 5)


def test_mismatched_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="genuine and impostor"):
        evaluate.verification_metrics(np.ones(4), np.ones(4, bool), np.arange(4) % 2)
    with pytest.raises(ValueError, match="differ in length"):
        evaluate.verification_metrics(np.ones(4), np.ones(3, bool), np.arange(4) % 2)


def test_roc_plot_and_table(tmp_path):
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(0.6, 0.1, 300), rng.normal(0.2, 0.1, 300)]
    issame = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    res = evaluate.verification_metrics(scores, issame, np.arange(600) % 10)
    assert 0.95 < res["verification_accuracy"] <= 1.0
    assert res["roc_auc"] > 0.99
    png = evaluate.save_roc_plot(scores, issame, tmp_path / "roc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res["rank1"] = 0.5
    table = evaluate.format_table(res)
    assert "verification accuracy" in table and "TAR @ FAR 1e-01" in table and "rank-1" in table


def test_flip_tta_embedding_is_mirror_invariant():
    from toolkit.data import normalize
    from toolkit.zoo import get_model

    model = get_model("tiny", input_size=32, embedding_dim=16)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    mirrored = images[:, :, ::-1]
    plain, plain_m = evaluate.embed(model, images), evaluate.embed(model, mirrored)
    tta, tta_m = evaluate.embed(model, images, flip=True), evaluate.embed(model, mirrored, flip=True)
    # A random network is not mirror-symmetric, so without the flip the embeddings differ...
    assert np.abs(plain - plain_m).max() > 1e-3
    # ...with it, an image and its mirror give one unit embedding: the direction of the summed raw outputs.
    np.testing.assert_allclose(tta, tta_m, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tta, axis=1), 1.0, atol=1e-9)
    raw = [np.asarray(model(normalize(x), training=False), np.float64) for x in (images, mirrored.copy())]
    both = raw[0] + raw[1]
    np.testing.assert_allclose(tta, both / np.linalg.norm(both, axis=1, keepdims=True), atol=1e-5)
