"""Zoo: taps declared once, reachable by name, pre-activation, and surviving save/load."""

import numpy as np
import pytest

from toolkit.modelfile import load_face_model, save_face_model
from toolkit.zoo import available_models, get_model, get_tap, list_taps, stage_taps, tap_key, tap_model


@pytest.fixture(scope="module")
def tiny():
    return get_model("tiny", input_size=32)


def test_registry_names_and_unknown():
    assert {"mobilefacenet", "tiny"} <= set(available_models())
    with pytest.raises(KeyError, match="unknown model 'nope'.*mobilefacenet"):
        get_model("nope")


def test_mobilefacenet_size_and_taps():
    m = get_model("mobilefacenet")
    assert 0.8e6 < m.count_params() <= 1.2e6
    assert m.output_shape == (None, 128)
    taps = list_taps(m)
    assert [t.stage for t in taps][:2] == ["first", "first"] and taps[-1].stage == "last"
    strides = [t.stride for t in taps]
    assert strides == sorted(strides) and strides[-1] == 16
    rfs = [t.receptive_field for t in taps]
    assert rfs == sorted(rfs)
    out = tap_model(m, ["stem/conv", "head/conv"])(np.zeros((1, 112, 112, 3), np.float32))
    assert out["stem__conv"].shape == (1, 56, 56, 64)
    assert out["head__conv"].shape == (1, 7, 7, 512)
    assert set(stage_taps(m)) == {"first", "middle", "last"}


def test_width_multiplier_shrinks_model():
    half = get_model("mobilefacenet", width=0.5).count_params()
    assert half < get_model("mobilefacenet").count_params() / 2


def test_tap_shapes_match_declared_channels_and_stride(tiny):
    outs = tap_model(tiny)(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))
    for t in list_taps(tiny):
        assert outs[tap_key(t.name)].shape == (2, 32 // t.stride, 32 // t.stride, t.channels)
    assert outs["embedding"].shape == (2, 64)


def test_taps_are_pre_activation(tiny):
    """A tap value can be negative exactly where its ReLU output is zero."""
    import keras

    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    tap = get_tap(tiny, "stem/conv")
    layer = tiny.get_layer(tap.layer_name)
    relu = next(n.operation for n in layer._outbound_nodes)
    assert isinstance(relu, keras.layers.ReLU)
    probe = keras.Model(tiny.input, [layer.output, relu.output])
    pre, post = (np.asarray(a) for a in probe(x))
    assert (pre < 0).mean() > 0.1
    np.testing.assert_allclose(post, np.maximum(pre, 0), atol=1e-6)
    assert np.all(post[pre < 0] == 0)


def test_unknown_tap_lists_valid_names(tiny):
    with pytest.raises(KeyError, match="unknown tap 'stage9/x'.*stem/conv"):
        tap_model(tiny, ["stage9/x"])


def test_save_load_round_trip_keeps_taps_and_outputs(tiny, tmp_path):
    path = save_face_model(tiny, tmp_path / "model.keras", recipe="test")
    model, meta = load_face_model(path)
    assert [t.name for t in list_taps(model)] == [t.name for t in list_taps(tiny)]
    assert meta["recipe"] == "test" and meta["normalization"]["scale"] == 128.0
    assert meta["taps"][0]["name"] == "stem/conv"
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(tiny(x)), atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp*"))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        load_face_model(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Keras model file"):
        load_face_model(bad)


def test_pooled_embedding_is_the_layer_before_the_last_linear_one():
    import keras

    from toolkit.zoo import pooled_embedding

    tiny = get_model("tiny", input_size=32, embedding_dim=16)
    pooled = pooled_embedding(tiny)
    assert tiny.output_shape == (None, 16) and pooled.output_shape == (None, 64)  # the last stage's channels
    assert [t.name for t in list_taps(pooled)] == [t.name for t in list_taps(tiny)]
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    inner = keras.Model(tiny.input, tiny.get_layer("pooled").output)(x)
    np.testing.assert_allclose(np.asarray(pooled(x)), np.asarray(inner).reshape(2, -1), atol=1e-6)
