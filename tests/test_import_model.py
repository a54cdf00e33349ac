"""`faceprobe import MODEL`: models built outside the zoo (keras.applications.MobileNetV2 with an embedding
head, nested; a hand-made CNN with PReLU) get their pre-activation taps found, stages and normalisation,
and then go through probe, int8 export and check like a zoo model."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from keras import layers

from toolkit.cli import main
from toolkit.modelfile import load_face_model
from toolkit.zoo import list_taps
from toolkit.zoo.imported import import_keras_model


def mobilenet_face(size: int = 64) -> keras.Model:
    """MobileNetV2 (untrained, width 0.35) nested in a model with a 64-d embedding head.

    Freshly initialised, its batch norms' unit variances shrink the activations ~1e4x per few blocks (the
    embedding comes out ~1e-11), which no int8 grid can hold; population statistics on smooth random
    images make them what a trained network's would be: normalised."""
    from toolkit.training.batchnorm import reestimate_batchnorm

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(size, size, 3),
                                          alpha=0.35)
    coarse = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    reestimate_batchnorm(base, np.kron(coarse, np.ones((1, size // 8, size // 8, 1), np.float32)))
    x = keras.Input((size, size, 3))
    h = layers.GlobalAveragePooling2D()(base(x))
    return keras.Model(x, layers.Dense(64, name="embedding")(h), name="mobilenetv2_face")


def prelu_cnn(size: int = 48) -> keras.Model:
    """Biased conv -> PReLU, conv -> BN -> PReLU, a conv with a fused ReLU, conv -> BN -> LeakyReLU."""
    keras.utils.set_random_seed(1)
    i = keras.Input((size, size, 3))
    y = layers.PReLU(shared_axes=[1, 2], name="act1")(layers.Conv2D(16, 3, 2, padding="same", name="c1")(i))
    y = layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="c2")(y)
    y = layers.PReLU(shared_axes=[1, 2], name="act2")(layers.BatchNormalization(name="bn2")(y))
    y = layers.Conv2D(32, 3, padding="same", activation="relu", name="fused")(y)
    y = layers.Conv2D(64, 3, 2, padding="same", use_bias=False, name="c4")(y)
    y = layers.LeakyReLU(name="act4")(layers.BatchNormalization(name="bn4")(y))
    y = layers.Dense(32, name="embedding")(layers.GlobalAveragePooling2D()(y))
    return keras.Model(i, y, name="prelu_cnn")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Both foreign models saved as the user would have them, and imported through the CLI."""
    d = tmp_path_factory.mktemp("foreign")
    mobilenet_face().save(d / "mnv2.keras")
    prelu_cnn().save(d / "prelu.h5")
    assert main(["import", str(d / "mnv2.keras"), "--out", str(d / "mnv2_fp.keras")]) == 0
    assert main(["import", str(d / "prelu.h5"), "--out", str(d / "prelu_fp.keras"), "--mean", "0",
                 "--scale", "255"]) == 0
    return d


def test_mobilenetv2_taps_are_the_batch_norms_feeding_relu6():
    model = mobilenet_face()
    imported, origin = import_keras_model(model)
    taps = list_taps(imported)
    names = [t.name for t in taps]
    # 17 blocks: the first has no expansion (2 BN+ReLU6), the other 16 have two; plus stem and head.
    assert len(taps) == 35
    assert names[0] == "bn_Conv1" and names[-1] == "Conv_1_bn"
    assert not any(n.endswith("project_BN") for n in names)  # linear bottlenecks: no activation follows
    assert [t.stride for t in taps] == sorted(t.stride for t in taps)
    assert {t.stage for t in taps} == {"first", "middle", "last"}
    assert taps[0].stage == "first" and taps[-1].stage == "last" and taps[-1].stride == 32
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(imported(x)), np.asarray(model(x)), atol=1e-5)
    assert origin["taps"] == "found"


def test_prelu_cnn_taps_skip_the_fused_activation_and_adapt_the_input():
    model = prelu_cnn()
    imported, _ = import_keras_model(model, mean=[0.0], scale=[255.0])
    taps = list_taps(imported)
    assert [t.name for t in taps] == ["c1", "bn2", "bn4"]  # "fused" keeps its pre-activation inside
    assert [(t.stride, t.receptive_field) for t in taps] == [(2, 3), (4, 7), (8, 23)]
    assert [t.stage for t in taps] == ["first", "middle", "last"]
    # The file takes faceprobe's (pixel - 127.5) / 128; the model itself wanted pixel / 255.
    x = np.random.default_rng(1).uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(imported(x)), np.asarray(model((x * 128 + 127.5) / 255)),
                               atol=1e-5)


def test_named_taps_and_bad_names():
    model = prelu_cnn()
    imported, origin = import_keras_model(model, taps=["c2", "bn4"])
    assert [t.name for t in list_taps(imported)] == ["c2", "bn4"] and origin["taps"] == "named"
    with pytest.raises(KeyError, match="no such layer"):
        import_keras_model(model, taps=["nope"])
    with pytest.raises(ValueError, match="not a spatial map"):
        import_keras_model(model, taps=["embedding"])


def test_cli_import_writes_a_loadable_model_file(saved):
    model, meta = load_face_model(saved / "prelu_fp.keras")
    assert [t["name"] for t in meta["taps"]] == ["c1", "bn2", "bn4"]
    assert meta["origin"]["input_normalization"] == {"mean": [0.0], "scale": [255.0]}
    assert meta["normalization"]["mean"] == 127.5  # the file itself takes faceprobe's normalisation
    _, meta = load_face_model(saved / "mnv2_fp.keras")
    assert len(meta["taps"]) == 35


def test_cli_import_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["import", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "o.keras")]) == 2
    assert "no model at" in capsys.readouterr().err
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    assert main(["import", str(folder), "--out", str(tmp_path / "o.keras")]) == 2
    assert "cannot be tapped" in capsys.readouterr().err
    text = tmp_path / "model.txt"
    text.write_text("x")
    assert main(["import", str(text), "--out", str(tmp_path / "o.keras")]) == 2
    assert "not a Keras model file" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name, variant", [("prelu_fp.keras", "int8"), ("mnv2_fp.keras", "float16")])
def test_imported_models_probe_export_and_check(saved, name, variant, tmp_path, capsys):
    """The PReLU CNN goes through int8. The untrained MobileNetV2 goes through float16: its int8 deploy and
    probe embeddings agree only at cosine 0.63-0.75 (measured at widths 1.0 and 0.35; 17 random blocks
    amplify rounding), which the export's own verification refuses, as it should."""
    from toolkit.data import synthesize

    model_path = saved / name
    size = int(load_face_model(model_path)[0].input_shape[1])
    faces = synthesize(tmp_path / "faces", identities=4, images_per_identity=3, size=size, seed=2,
                       progress=False)
    assert main(["probe", str(model_path), "--images", str(faces), "--n-images", "2", "--per-stage", "2",
                 "--steps", "3", "--out", str(tmp_path / "probe"), "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert set(probe["stages"]) == {"first", "middle", "last"}
    assert main(["export", str(model_path), "--variants", variant, "--calibration", str(faces),
                 "--out", str(tmp_path / "export"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)["variants"][variant]
    assert exported["deploy"]["verification"]["embedding_cosine_vs_keras"] > 0.9
    code = main(["check", str(model_path), "--variant", variant, "--out", str(tmp_path / "check"),
                 "--sample", "8", "--search", "never", "--json"])
    assert code in (0, 1)  # a verdict either way: untrained weights decide pass or fail
    summary = json.loads(capsys.readouterr().out)
    assert summary["variant"] == variant and summary["passed"] == (code == 0)
