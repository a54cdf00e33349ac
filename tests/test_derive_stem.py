"""The stem as space-to-depth: an exact rewrite of a strided conv on the image, kept through save, load and
TFLite export."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from device.runtime import Runtime
from toolkit.derive.stem import shipped_stem, space_to_depth_stem, stem_conv
from toolkit.export import export_model
from toolkit.modelfile import load_face_model, save_face_model
from toolkit.zoo import SpaceToDepth, TapPoint, TapSpec, list_taps, tap_model


def stem_net(size: int, k: int, s: int, padding: str) -> keras.Model:
    """A face-model-like net: a strided stem on the image, its tap, a ReLU, a conv, a pooled embedding."""
    keras.utils.set_random_seed(k * 10 + s)
    x = keras.Input((size, size, 3), name="image")
    h = layers.Conv2D(8, k, strides=s, padding=padding, name="stem")(x)
    h = TapPoint(TapSpec("stem", "first", 8, s, k).to_dict())(h)
    h = layers.Conv2D(6, 3, padding="same", name="body")(layers.ReLU()(h))
    return keras.Model(x, layers.Dense(4, name="embedding")(layers.GlobalAveragePooling2D()(h)), name="s")


@pytest.mark.parametrize(
    "size,k,s,padding",
    [(38, 7, 2, "valid"), (37, 7, 2, "valid"), (32, 3, 2, "same"), (33, 3, 2, "same"), (31, 5, 2, "same"),
     (30, 6, 3, "valid")],
)
def test_the_rewritten_stem_is_the_same_function(size, k, s, padding):
    model = stem_net(size, k, s, padding)
    rewritten = space_to_depth_stem(model)
    x = np.random.default_rng(size).uniform(-1, 1, (3, size, size, 3)).astype(np.float32)
    assert any(isinstance(layer, SpaceToDepth) for layer in rewritten.layers)
    conv = rewritten.get_layer("stem")
    assert conv.get_config()["strides"] == (1, 1) and conv.kernel.shape[2] == 3 * s * s
    np.testing.assert_allclose(rewritten(x), model(x), atol=1e-5)
    assert [t.name for t in list_taps(rewritten)] == ["stem"]
    np.testing.assert_allclose(tap_model(rewritten)(x)["stem"], tap_model(model)(x)["stem"], atol=1e-5)


def test_auto_rewrites_large_kernels_only():
    big, small = stem_net(38, 7, 2, "valid"), stem_net(32, 3, 2, "same")
    assert shipped_stem(big, "auto") is not big and shipped_stem(small, "auto") is small
    assert shipped_stem(big, "conv") is big
    assert shipped_stem(small, "space_to_depth") is not small
    image = keras.Input((16, 16, 3))
    flat = keras.Model(image, layers.Conv2D(4, 3, padding="same")(image))
    assert stem_conv(flat) is None and shipped_stem(flat, "space_to_depth") is flat  # stride 1: nothing


def test_a_rewritten_student_saves_loads_and_exports_with_its_taps(tmp_path):
    model = space_to_depth_stem(stem_net(38, 7, 2, "valid"))
    path = save_face_model(model, tmp_path / "model.keras")
    loaded, _ = load_face_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 38, 38, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    files = export_model(path, tmp_path / "export", variants=("float32",), progress=False)["float32"]
    rt = Runtime(files["deploy"])
    assert "SPACE_TO_DEPTH" in {op["op_name"] for op in rt._interpreter._get_ops_details()}
    (embedding,) = rt.run(x).values()
    np.testing.assert_allclose(embedding, model(x), atol=1e-4)
