"""Taps that can carry a finding: every tap of every zoo model is pre-activation, and the findings know
which taps are affine maps of the image."""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from toolkit.probe.affine import excluded_stages, upstream_nonlinearities
from toolkit.zoo import get_model, list_taps, stage_taps


def _model(name, activation):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PReLU's int8 speed warning
        return get_model(name, input_size=64, activation=activation, width=0.5)


@pytest.mark.parametrize("name", ["tiny", "mobilefacenet"])
@pytest.mark.parametrize("activation", ["relu", "prelu"])
def test_every_tap_is_pre_activation(name, activation):
    """Each tap feeds exactly its activation, and holds negative values the activation then changes."""
    model = _model(name, activation)
    kind = keras.layers.ReLU if activation == "relu" else keras.layers.PReLU
    if activation == "prelu":  # PReLU starts as ReLU (alpha 0): give it slopes so both parts are visible
        for layer in model.layers:
            if isinstance(layer, keras.layers.PReLU):
                layer.set_weights([np.full_like(w, 0.25) for w in layer.get_weights()])
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    taps = list_taps(model)
    assert taps
    layers = [model.get_layer(t.layer_name) for t in taps]
    consumers = [[n.operation for n in layer._outbound_nodes] for layer in layers]
    for t, ops in zip(taps, consumers, strict=True):
        assert len(ops) == 1 and isinstance(ops[0], kind), f"{t.name} feeds {ops}, not its {activation}"
    probe = keras.Model(model.input, [v for layer, ops in zip(layers, consumers, strict=True)
                                      for v in (layer.output, ops[0].output)])
    outs = [np.asarray(v) for v in probe(x, training=False)]
    for t, pre, post in zip(taps, outs[::2], outs[1::2], strict=True):
        assert (pre < 0).mean() > 0.05, f"{t.name} has no negative values: not pre-activation"
        want = np.maximum(pre, 0) if activation == "relu" else np.where(pre > 0, pre, 0.25 * pre)
        np.testing.assert_allclose(post, want, atol=1e-5, err_msg=t.name)


@pytest.mark.parametrize("activation", ["relu", "prelu"])
def test_first_stage_taps_and_affine_stems(activation):
    mfn, tiny = _model("mobilefacenet", activation), _model("tiny", activation)
    # MobileFaceNet's first-stage tap (stem/dw) follows the stem's activation: it carries a finding.
    assert stage_taps(mfn)["first"].name == "stem/dw"
    assert upstream_nonlinearities(mfn, "stem/dw")
    assert excluded_stages(mfn, {s: t.name for s, t in stage_taps(mfn).items()}) == {}
    # Stem convs are conv + batch norm of the image: affine. tiny's first stage is its stem: left out.
    assert upstream_nonlinearities(mfn, "stem/conv") == upstream_nonlinearities(tiny, "stem/conv") == []
    out = excluded_stages(tiny, {s: t.name for s, t in stage_taps(tiny).items()})
    assert list(out) == ["first"] and "affine" in out["first"]


def test_affine_tap_ascent_change_is_the_same_for_every_image():
    """Why an affine stem is left out: its gradient, hence the raw ascent change, ignores the image."""
    from toolkit.probe.ascent import Ascender
    from toolkit.probe.plans import make_plan

    model = _model("tiny", "relu")
    images = np.random.default_rng(1).uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    plan = make_plan(model, images, taps=["first", "last"], channels=[0], steps=2)
    delta = Ascender(model, plan).run().final_images - images[:, None]
    first, last = delta[:, 0], delta[:, 1]
    # Equal up to float32 rounding of (start + change) - start.
    assert np.abs(first[1:] - first[:1]).max() < 1e-3 * np.abs(first).max()
    assert np.abs(last[1:] - last[:1]).max() > 1e-3 * np.abs(last).max()
