"""The findings on networks whose answers are known by construction, and the probe CLI's defaults."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from keras import layers

from toolkit.probe.findings import frequency_finding
from toolkit.probe.invariance import invariance_finding
from toolkit.zoo import TapPoint, TapSpec

SIZE = 16
LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)


def _tap(x, name, stage, stride=1, rf=1):
    return TapPoint(TapSpec(name, stage, int(x.shape[-1]), stride, rf).to_dict())(x)


def _finish(inp, x, name):
    emb = layers.Dense(4, name="embedding")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, emb, name=name)


def high_pass_model() -> keras.Model:
    """First stage: a fixed Laplacian (high-pass) per colour channel, ReLU, a 1x1 channel copy, batch norm:
    its ascent change is the Laplacian of a mask, the finest pattern there is. Last stage: 4x4 average
    pooling and a 1x1 conv. An untrained copy has random 3x3 filters in place of the Laplacian."""
    inp = keras.Input((SIZE, SIZE, 3))
    hp = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="highpass")
    x = layers.ReLU()(hp(inp))
    copy = layers.Conv2D(3, 1, use_bias=False, name="copy")
    x = _tap(layers.BatchNormalization()(copy(x)), "stem/hp", "first", 1, 3)
    x = layers.ReLU()(x)
    x = layers.AveragePooling2D(4)(x)
    x = _tap(layers.BatchNormalization()(layers.Conv2D(4, 1, use_bias=False)(x)), "head/pool", "last", 4, 6)
    model = _finish(inp, layers.ReLU()(x), "highpass")
    hp.set_weights([np.repeat(LAPLACIAN[:, :, None, None], 3, axis=2)])
    copy.set_weights([np.eye(3, dtype=np.float32)[None, None]])
    return model


def identity_model() -> keras.Model:
    """Images carry identity in colour channel 0 only (channels 1 and 2 are per-photo noise). The first
    stage's 1x1 conv reads channel 0 alone, so every ReLU mask - hence the last stage's ascent change -
    depends on the person, not the photo: the last stage is identity-invariant by construction. An
    untrained copy mixes in the noise channels."""
    inp = keras.Input((SIZE, SIZE, 3))
    read = layers.Conv2D(4, 1, use_bias=False, name="read")
    x = _tap(layers.BatchNormalization()(read(inp)), "stem/read", "first")
    x = layers.ReLU()(x)
    x = _tap(layers.BatchNormalization()(layers.Conv2D(4, 1, use_bias=False)(x)), "head/mix", "last")
    model = _finish(inp, layers.ReLU()(x), "identity")
    w = np.zeros((1, 1, 3, 4), np.float32)
    w[0, 0, 0] = [1.0, -1.0, 0.5, -0.5]
    read.set_weights([w])
    return model


def _smooth(rng, n):
    """Low-frequency random images: 4x4 random cells upsampled."""
    return np.kron(rng.uniform(-0.8, 0.8, (n, 4, 4, 3)), np.ones((1, 4, 4, 1))).astype(np.float32)


def test_high_pass_first_stage_comes_out_finer_than_untrained():
    rng = np.random.default_rng(0)
    images = _smooth(rng, 8) + rng.normal(0, 0.1, (8, SIZE, SIZE, 3)).astype(np.float32)
    out = frequency_finding(high_pass_model(), images, per_tap=3, seeds=(1, 2, 3, 4, 5, 6))
    f = out["frequency"]
    assert f["excluded"] == {}  # both taps follow a nonlinearity
    assert f["trained"]["first"] > f["controls"]["untrained"]["first"]
    assert f["trained"]["first"] > f["controls"]["noise"]["first"]  # finer than white noise
    assert f["ci"]["first"][0] > 0 and f["verdict"]["first"] == "reproduced"
    for key in ("trained", "effect", "ci", "verdict"):
        assert set(f[key]) == {"first", "last"}
    assert set(f["controls"]) == {"untrained", "pixels", "noise"}
    assert len(f["untrained_seeds"]["first"]) == 6
    # The last stage sits on the same high-pass filter: finer than untrained too, against its claim.
    assert f["verdict"]["last"] == "not reproduced" and f["ci"]["last"][0] > 0


def test_identity_invariant_last_stage_comes_out_invariant():
    rng = np.random.default_rng(1)
    people, per = 6, 4
    labels = np.repeat(np.arange(people), per)
    pattern = np.sign(rng.normal(size=(people, SIZE, SIZE)))
    images = rng.normal(0, 1.0, (people * per, SIZE, SIZE, 3))
    images[..., 0] = 0.8 * pattern[labels] + rng.normal(0, 0.05, (people * per, SIZE, SIZE))
    out = invariance_finding(identity_model(), images.astype(np.float32), labels, per_tap=2)
    assert out["source"] == "ascent"
    assert out["excluded"] == {"first": out["excluded"]["first"]}  # the first tap reads the image linearly
    assert out["trained"]["last"] > 0.9
    assert out["controls"]["untrained"]["last"] < out["trained"]["last"] - 0.2
    assert abs(out["controls"]["permutation"]["last"]) < 0.05  # shuffled identities: chance
    assert abs(out["controls"]["noise"]["last"]) < 0.05
    assert out["controls"]["pixels"]["last"] < out["trained"]["last"]
    assert out["ci"]["last"][0] > 0 and out["verdict"]["last"] == "reproduced"
    assert out["verdict"]["first"] == "inconclusive"
    assert out["permutation_p"]["last"] < 0.01


def test_untrained_model_is_not_reproduced():
    """A freshly initialised network is its own control: nothing training-made to find."""
    from toolkit.zoo import get_model

    model = get_model("tiny", input_size=32, embedding_dim=8)
    images = np.random.default_rng(2).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    out = frequency_finding(model, images, per_tap=2)
    for f in out.values():
        assert f["verdict"]["first"] == "inconclusive" and "affine" in f["excluded"]["first"]
        assert all(f["verdict"][s] != "reproduced" for s in ("middle", "last"))


def test_probe_cli_defaults_are_the_method():
    from toolkit.cli import build_parser

    args = build_parser().parse_args(["probe", "model.keras", "--out", "x"])
    assert (args.steps, args.step_size, args.step_rule, args.objective) == (20, 1.0, "raw", "mean")
    assert (args.per_stage, args.channel_rule, args.subspace) == (5, "top", {"kind": "full"})
    assert (args.source, args.seeds, args.grid) == ("ascent", 3, None)
    assert not (args.clip or args.jitter or args.l2_decay or args.blur)


@pytest.mark.parametrize("flag", ["--seeds", "--grid"])
def test_probe_cli_rejects_bad_controls(flag, tmp_path):
    from toolkit.cli import main

    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Flatten()])
    model.save(tmp_path / "m.keras")
    assert main(["probe", str(tmp_path / "m.keras"), "--invariance", flag, "-1"]) == 2
