"""Export a tiny model to every variant once; check taps, Keras agreement, roles, manifests."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from device.manifest import MANIFEST_SCHEMA, load_manifest, manifest_path_for, sha256_file
from device.runtime import Runtime
from toolkit.data.normalize import normalize
from toolkit.export import AGREEMENT_COSINE, KERAS_REL_TOLERANCE, VARIANTS, Calibration, Recipe, export_model
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model, list_taps, tap_key, tap_layer_name, tap_model

SIZE = 32


def faces(n: int, seed: int) -> np.ndarray:
    """Smooth uint8 images (blocky colour fields plus noise): face-like statistics, no data needed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    smooth = np.repeat(np.repeat(coarse, SIZE // 4, axis=1), SIZE // 4, axis=2)
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = get_model("tiny", input_size=SIZE, embedding_dim=16)
    path = save_face_model(model, tmp_path_factory.mktemp("model") / "model.keras")
    return model, path


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, path = trained
    out = tmp_path_factory.mktemp("export")
    small = Calibration(count=16)
    recipes = [Recipe(v, calibration=small) if v in ("int8", "int16x8") else v for v in VARIANTS]
    files = export_model(path, out, variants=recipes, calibration=faces(64, 1))
    return model, files


@pytest.fixture(scope="module")
def kept(trained, tmp_path_factory):
    """int8 with one block kept in float and int8 input/output."""
    model, path = trained
    out = tmp_path_factory.mktemp("kept")
    recipe = Recipe("int8", precision={"stage1/block1": "float32"}, calibration=Calibration(count=16),
                    int8_io=True)
    files = export_model(path, out, variants=[recipe], calibration=faces(64, 1))
    return model, files


@pytest.fixture(scope="module")
def images():
    return normalize(faces(6, 99))


def test_files_and_manifests_for_every_variant(exported):
    model, files = exported
    assert list(files) == list(VARIANTS)
    for variant, roles in files.items():
        assert roles["deploy"].name == f"model.{variant}.tflite"
        assert roles["probe"].name == f"model.{variant}.probe.tflite"
        for role, path in roles.items():
            manifest = load_manifest(manifest_path_for(path))
            assert manifest["schema"] == MANIFEST_SCHEMA
            assert (manifest["variant"], manifest["role"]) == (variant, role)
            assert manifest["sha256"] == sha256_file(path)
            assert manifest["bytes"] == path.stat().st_size
    # Staging leaves nothing behind.
    out = files["float32"]["deploy"].parent
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_taps_survive_in_every_variant_with_their_shapes(exported, images):
    model, files = exported
    specs = list_taps(model)
    reference = tap_model(model)(images, training=False)
    for variant, roles in files.items():
        rt = Runtime(roles["probe"])
        assert list(rt.taps) == [t.name for t in specs], variant
        out = rt.run(images)
        for spec in specs:
            key = tap_key(spec.name)
            side = SIZE // spec.stride
            assert out[key].shape == tuple(reference[key].shape) == (6, side, side, spec.channels)
            entry = rt.taps[spec.name]
            fields = ("key", "stage", "channels", "stride", "receptive_field")
            assert tuple(entry[f] for f in fields) == (key, spec.stage, spec.channels, spec.stride,
                                                       spec.receptive_field)
        deploy = Runtime(roles["deploy"])
        assert deploy.taps == {} and list(deploy.run(images)) == ["embedding"]


def test_float32_taps_match_keras(exported, images):
    model, files = exported
    reference = {k: np.asarray(v) for k, v in tap_model(model)(images, training=False).items()}
    out = Runtime(files["float32"]["probe"]).run(images)
    for key, ref in reference.items():
        err = np.max(np.abs(out[key] - ref)) / np.max(np.abs(ref))
        assert err < KERAS_REL_TOLERANCE, key


def test_taps_are_pre_activation(exported, images):
    """Where the Keras ReLU after a tap outputs zero, the exported tap is negative (not clipped)."""
    model, files = exported
    post = {}
    for spec in list_taps(model):
        point = model.get_layer(tap_layer_name(spec.name))
        relu = next(layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)
                    and layer.input is point.output)
        post[tap_key(spec.name)] = relu.output
    relu_out = {k: np.asarray(v) for k, v in keras.Model(model.input, post)(images, training=False).items()}
    for variant in ("float32", "int8"):
        out = Runtime(files[variant]["probe"]).run(images)
        for key, after in relu_out.items():
            tap = out[key]
            off = after == 0
            assert 0.2 < off.mean() < 0.8, key
            if variant == "float32":
                assert np.all(tap[off] <= 1e-5), key
                assert np.mean(tap[off] < 0) > 0.95, key
                np.testing.assert_allclose(tap[~off], after[~off], rtol=1e-3, atol=1e-4)
            else:
                # Quantisation moves values near zero; clearly negative ones keep their sign.
                assert np.mean(tap[off] < 0) > 0.8, key
                assert tap.min() < -10 * int8_scale(files[variant]["probe"], key)


def int8_scale(path, key) -> float:
    outputs = load_manifest(manifest_path_for(path))["outputs"]
    return next(o for o in outputs if o["key"] == key)["int8"]["scale"]


def test_deploy_and_probe_embeddings_agree(exported, images):
    _, files = exported
    for variant, roles in files.items():
        a = Runtime(roles["deploy"]).run(images)["embedding"]
        b = Runtime(roles["probe"]).run(images)["embedding"]
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= AGREEMENT_COSINE[variant], variant
        recorded = load_manifest(manifest_path_for(roles["probe"]))["verification"]["deploy_probe_cosine"]
        assert recorded >= AGREEMENT_COSINE[variant]


def test_manifest_round_trip_and_quantisation_fields(exported):
    _, files = exported
    for variant, roles in files.items():
        for path in roles.values():
            mp = manifest_path_for(path)
            manifest = load_manifest(mp)
            assert json.loads(json.dumps(manifest)) == manifest == json.loads(mp.read_text())
            rt = Runtime(path)
            assert rt.input_shape == (SIZE, SIZE, 3)
            assert manifest["input"]["normalization"]["channel_order"] == "RGB"
            assert manifest["input"]["dtype"] == "float32"
            if variant == "int8":
                step = manifest["input"]["quantization_step"]
                assert rt.input_scale == step["scale"]
                # The input spans about 2 normalised units over 256 codes.
                assert 1 / 256 < step["scale"] < 4 / 256
                assert all(o["int8"] and o["int8"]["scale"] > 0 for o in manifest["outputs"])
            else:
                assert rt.input_scale is None
                assert all(o["int8"] is None for o in manifest["outputs"])
            assert manifest["converter"]["tensorflow"] and manifest["keep_float"] == []


def test_keep_float_and_int8_io(kept, exported, images):
    model, files = kept
    probe = files["int8"]["probe"]
    manifest = load_manifest(manifest_path_for(probe))
    assert manifest["keep_float"] == ["stage1/block1"]
    assert manifest["converter"]["options"]["float_nodes"]
    entries = {o["key"]: o for o in manifest["outputs"]}
    assert entries["stage1__block1"]["kept_float"] and entries["stage1__block1"]["int8"] is None
    assert entries["stem__conv"]["int8"] is not None
    # int8 I/O: the interpreter exchanges int8, the runtime (de)quantises with the manifest.
    assert manifest["input"]["dtype"] == "int8" and entries["embedding"]["dtype"] == "int8"
    rt = Runtime(probe)
    assert rt.input_scale == manifest["input"]["scale"]
    reference = {k: np.asarray(v) for k, v in tap_model(model)(images, training=False).items()}
    out = rt.run(images)
    plain = Runtime(exported[1]["int8"]["probe"]).run(images)

    # The kept block computes in float: its output is off the int8 grid (more than 256 distinct values).
    assert len(np.unique(out["stage1__block1"])) > 256 >= len(np.unique(plain["stage1__block1"]))
    assert len(np.unique(out["stem__conv"])) <= 256
    cos = np.sum(out["embedding"] * reference["embedding"], 1) / (
        np.linalg.norm(out["embedding"], axis=1) * np.linalg.norm(reference["embedding"], axis=1))
    assert cos.min() > 0.95
