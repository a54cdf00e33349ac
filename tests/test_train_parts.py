"""Trainer parts in isolation: recipes, margin heads, the LR schedule, batch-norm re-estimation."""

import math

import numpy as np
import pytest

from toolkit.data import parse_identities
from toolkit.training.config import TrainConfig, load_recipe, load_train_config, parse_set

MODELS = __import__("pathlib").Path(__file__).resolve().parents[1] / "models"


def test_recipes_load_and_override():
    for recipe in ("mobilefacenet-orl.toml", "tiny-synth.toml"):
        cfg = load_train_config(MODELS / recipe)
        assert cfg.epochs >= 1 and cfg.model in ("tiny", "mobilefacenet")
    cfg = load_train_config(MODELS / "mobilefacenet-orl.toml")
    assert cfg.model == "mobilefacenet" and cfg.identities == "s1-s30"
    over = cfg.with_overrides(epochs=3, strategy=None, **parse_set(["margin=0.2", "head=cosface"]))
    assert (over.epochs, over.margin, over.head, over.strategy) == (3, 0.2, "cosface", cfg.strategy)
    assert cfg.with_overrides(**parse_set(["augment=false"])).augment is False
    assert cfg.with_overrides(**parse_set(["augment=mild"])).augment == "mild"


def test_bad_recipes_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('epochz = 3\n')
    with pytest.raises(ValueError, match="unknown recipe keys \\['epochz'\\]"):
        load_train_config(bad)
    bad.write_text('[model]\nmodel = "tiny"\n[other]\nmodel = "x"\n')
    with pytest.raises(ValueError, match="set twice"):
        load_train_config(bad)
    with pytest.raises(ValueError, match="head must be one of"):
        TrainConfig(head="softmax")
    with pytest.raises(ValueError, match="augment must be true, false or a strength name"):
        TrainConfig(augment=2)
    with pytest.raises(FileNotFoundError, match="no recipe"):
        load_train_config(tmp_path / "missing.toml")


def test_load_recipe_is_the_old_name_of_load_train_config():
    assert load_recipe is load_train_config


def test_identity_selection_syntax():
    assert parse_identities("s1-s3,s10") == ["s1", "s2", "s3", "s10"]
    assert parse_identities("alice, bob") == ["alice", "bob"]
    assert parse_identities("id008-id010") == ["id008", "id009", "id010"]
    assert parse_identities("s9-s11") == ["s9", "s10", "s11"]
    with pytest.raises(ValueError, match="backwards"):
        parse_identities("s5-s2")


def test_arcface_and_cosface_logits():
    from toolkit.training.heads import MarginHead

    theta = 0.6
    emb = np.array([[math.cos(theta), math.sin(theta)]], np.float32) * 3.0  # norm does not matter
    labels = np.array([0], np.int32)
    for kind, expected_target in (("arcface", math.cos(theta + 0.5)), ("cosface", math.cos(theta) - 0.5)):
        head = MarginHead(2, kind=kind, scale=10.0, margin=0.5)
        head.build([(None, 2), (None,)])
        head.centres.assign(np.array([[2.0, 0.0], [0.0, 1.0]], np.float32))  # class 0 along x, 1 along y
        train = np.asarray(head([emb, labels], training=True))
        infer = np.asarray(head([emb, labels], training=False))
        np.testing.assert_allclose(infer[0], [10 * math.cos(theta), 10 * math.sin(theta)], rtol=1e-5)
        np.testing.assert_allclose(train[0], [10 * expected_target, 10 * math.sin(theta)], rtol=1e-5)


def test_arcface_keeps_penalising_past_pi_minus_m():
    from toolkit.training.heads import MarginHead

    head = MarginHead(2, kind="arcface", scale=1.0, margin=0.5)
    head.build([(None, 2), (None,)])
    head.centres.assign(np.eye(2, dtype=np.float32))
    theta = math.pi - 0.2  # beyond pi - m, cos(theta + m) would rise again
    emb = np.array([[math.cos(theta), math.sin(theta)]], np.float32)
    out = np.asarray(head([emb, np.array([0], np.int32)], training=True))[0, 0]
    assert out == pytest.approx(math.cos(theta) - 0.5 * math.sin(0.5), rel=1e-5)
    assert out < math.cos(theta)


def test_warmup_cosine_schedule():
    from toolkit.training.schedule import WarmupCosine

    s = WarmupCosine(1.0, total_steps=110, warmup_steps=10, final_fraction=0.1)
    lr = [float(s(i)) for i in (0, 4, 9, 10, 60, 110, 500)]
    assert lr[0] == pytest.approx(0.1) and lr[1] == pytest.approx(0.5)
    assert lr[2] == pytest.approx(1.0) and lr[3] == pytest.approx(1.0)
    assert lr[4] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert lr[5] == pytest.approx(0.1) and lr[6] == pytest.approx(0.1)


def _tiny_with_spoiled_stats(seed=0):
    import keras

    from toolkit.training.batchnorm import batchnorm_layers
    from toolkit.zoo import get_model

    keras.utils.set_random_seed(seed)
    model = get_model("tiny", input_size=32)
    for layer in batchnorm_layers(model):
        # Moving statistics far from anything the weights produce: what a short run leaves behind.
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, np.float32))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.05, np.float32))
    return model


def test_bn_reestimation_matches_full_batch_statistics():
    import keras

    from toolkit.training.batchnorm import batchnorm_layers, reestimate_batchnorm

    model = _tiny_with_spoiled_stats()
    x = np.random.default_rng(0).normal(0, 1, (48, 32, 32, 3)).astype(np.float32)
    # With the whole set as one batch, training mode normalises every layer by exactly the population
    # statistics; re-estimated moving statistics must reproduce it in inference mode.
    reference = np.asarray(model(x, training=True))
    before = np.asarray(model(x, training=False))
    assert np.abs(before - reference).max() > 1.0
    layers = batchnorm_layers(model)
    assert reestimate_batchnorm(model, x, batch_size=48) == len(layers) > 0
    after = np.asarray(model(x, training=False))
    np.testing.assert_allclose(after, reference, atol=2e-3 * np.abs(reference).max())

    # Accumulated over several batches, the first layer's statistics are still exactly the population's
    # (its input does not depend on any batch norm).
    reestimate_batchnorm(model, x, batch_size=16)
    first_in = np.asarray(keras.Model(model.input, layers[0].input)(x)).astype(np.float64)
    np.testing.assert_allclose(np.asarray(layers[0].moving_mean), first_in.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(layers[0].moving_variance), first_in.var((0, 1, 2)), rtol=1e-4)


def test_bn_check_detects_lag_and_repairs_it():
    from toolkit.training.batchnorm import check_batchnorm, closed_set_accuracy

    model = _tiny_with_spoiled_stats(1)
    rng = np.random.default_rng(1)
    # Four classes that differ in colour: training-mode embeddings separate them.
    colours = rng.uniform(-0.8, 0.8, (4, 1, 1, 3))
    labels = np.repeat(np.arange(4), 16)
    x = (colours[labels] + rng.normal(0, 0.15, (64, 32, 32, 3))).astype(np.float32)
    emb = np.array(model(x, training=True))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    centres = np.stack([emb[labels == c].mean(0) for c in range(4)], axis=1)
    assert closed_set_accuracy(model, centres, x, labels, training=True) > 0.9
    report = check_batchnorm(model, centres, x, labels, tolerance=0.05, batch_size=64)
    assert report["lagging"] and report["reestimated"]
    assert report["inference_accuracy"] < 0.6
    assert report["inference_accuracy_after"] > 0.9
    now = closed_set_accuracy(model, centres, x, labels, training=False)
    assert now == report["inference_accuracy_after"]
    # Healthy statistics: nothing to do.
    again = check_batchnorm(model, centres, x, labels, tolerance=0.05, batch_size=64)
    assert not again["lagging"] and not again["reestimated"]
