"""The board runtime: batching, kernels, (de)quantisation, activations; the files and inputs it refuses."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from device.activations import int8_codes, tap_activations, tap_statistics
from device.manifest import ManifestError, ModelFileError, load_manifest, manifest_path_for
from device.runtime import InputError, Runtime
from toolkit.data.normalize import normalize
from toolkit.export import Calibration, Recipe, export_keras
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model

SIZE = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from toolkit.modelfile import load_face_model

    keras.utils.set_random_seed(1)
    path = save_face_model(get_model("tiny", input_size=SIZE, embedding_dim=16),
                           tmp_path_factory.mktemp("m") / "model.keras")
    model, meta = load_face_model(path)
    rng = np.random.default_rng(0)
    cal = rng.integers(0, 256, (40, SIZE, SIZE, 3), dtype=np.uint8)
    return export_keras(model, meta, tmp_path_factory.mktemp("e"),
                        ["float32", Recipe("int8", calibration=Calibration(count=16))], calibration=cal)


@pytest.fixture
def images():
    return normalize(np.random.default_rng(5).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8))


def copy_pair(src, dst_dir, name="copy.tflite"):
    dst = dst_dir / name
    shutil.copy(src, dst)
    shutil.copy(manifest_path_for(src), manifest_path_for(dst))
    return dst


def test_any_batch_size_gives_the_same_per_image_result(files, images):
    rt = Runtime(files["float32"]["probe"])
    whole = rt.run(images)
    for i in (0, 4):
        single = rt.run(images[i:i + 1])
        for key in whole:
            np.testing.assert_allclose(single[key][0], whole[key][i], rtol=1e-5, atol=1e-6)
    assert rt.run(images[:2])["embedding"].shape == (2, 16)


def test_kernels_and_threads_are_explicit_and_recorded(files, images):
    results = {}
    for kernels in ("xnnpack", "builtin", "reference"):
        rt = Runtime(files["int8"]["deploy"], kernels=kernels, threads=1)
        info = rt.info()
        assert (info["kernels"], info["threads"], info["runtime"]) == (kernels, 1, "ai-edge-litert")
        assert info["runtime_version"] and info["machine"] and info["sha256"] == rt.manifest["sha256"]
        # XNNPACK takes over nodes; the other paths run every node on builtin kernels.
        assert (info["delegate_nodes"] > 0) == (kernels == "xnnpack")
        results[kernels] = rt.run(images)["embedding"]
    # Both int8 kernel paths give embeddings on the same scale (they may differ by a few steps).
    a, b = results["xnnpack"], results["builtin"]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.9
    with pytest.raises(ValueError, match="kernels must be one of"):
        Runtime(files["int8"]["deploy"], kernels="gpu")


def test_int8_outputs_are_dequantised_on_the_int8_grid(files, images):
    rt = Runtime(files["int8"]["probe"])
    out = rt.run(images)
    for name, entry in rt.taps.items():
        v = out[entry["key"]]
        assert v.dtype == np.float32
        codes = (v / entry["int8"]["scale"]) + entry["int8"]["zero_point"]
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3, err_msg=name)


def test_activations_statistics_and_saturation(files, images):
    for variant in ("float32", "int8"):
        rt = Runtime(files[variant]["probe"])
        acts = tap_activations(rt, images, batch_size=2)
        direct = rt.run(images)
        assert list(acts.values) == list(rt.taps)
        for name, entry in rt.taps.items():
            v = direct[entry["key"]]
            np.testing.assert_allclose(acts.values[name], v, rtol=1e-6, atol=1e-7)
            s = acts.stats[name]
            assert s["mean"] == pytest.approx(float(v.mean()), rel=1e-5, abs=1e-7)
            assert s["std"] == pytest.approx(float(v.std()), rel=1e-5)
            assert (s["min"], s["max"]) == (pytest.approx(float(v.min())), pytest.approx(float(v.max())))
            if variant == "float32":
                assert s["saturation"] is None
            else:
                assert 0.0 <= s["saturation"] <= 1.0
        assert acts.embedding.shape == (5, 16)
    with pytest.raises(KeyError, match="this model's taps are"):
        tap_activations(Runtime(files["float32"]["probe"]), images, taps=["nope"])
    with pytest.raises(ValueError, match="deploy model"):
        tap_activations(Runtime(files["float32"]["deploy"]), images)


def test_saturation_counts_values_at_the_int8_limits():
    entry = {"int8": {"scale": 0.5, "zero_point": -10}}
    # Codes: -128 (low limit), -10, 0, 127 (high limit) -> two of four saturated, one high.
    values = (np.array([-128, -10, 0, 127], np.float32) - (-10)) * 0.5
    assert list(int8_codes(values, entry["int8"])) == [-128, -10, 0, 127]
    s = tap_statistics(values, entry)
    assert s["saturation"] == 0.5 and s["saturation_high"] == 0.25


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, SIZE, SIZE), np.float32), "this model takes"),
    (np.zeros((2, SIZE + 1, SIZE, 3), np.float32), "this model takes"),
    (np.zeros((0, SIZE, SIZE, 3), np.float32), "empty batch"),
    (np.zeros((1, SIZE, SIZE, 3), np.uint8), "normalised float"),
])
def test_wrong_input_shape_or_dtype_refused(files, bad, message):
    with pytest.raises(InputError, match=message):
        Runtime(files["float32"]["deploy"]).run(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_input_refused(files, images, value):
    images = images.copy()
    images[1, 3, 4, 0] = value
    with pytest.raises(InputError, match="1 NaN/Inf"):
        Runtime(files["int8"]["deploy"]).run(images)


def test_missing_files_refused(files, tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        Runtime(tmp_path / "absent.tflite")
    model = tmp_path / "lonely.tflite"
    shutil.copy(files["float32"]["deploy"], model)
    with pytest.raises(ManifestError, match="no manifest"):
        Runtime(model)


def test_truncated_file_refused(files, tmp_path):
    path = copy_pair(files["float32"]["deploy"], tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="sha256"):
        Runtime(path)
    path.write_bytes(data[:6])
    with pytest.raises(ModelFileError, match="truncated"):
        Runtime(path)


def test_corrupt_file_refused_by_sha256(files, tmp_path):
    path = copy_pair(files["int8"]["probe"], tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match its manifest"):
        Runtime(path)


def test_foreign_file_refused(files, tmp_path):
    path = copy_pair(files["float32"]["deploy"], tmp_path)
    path.write_bytes(b"PK\x03\x04" + bytes(200))  # a zip, e.g. a .keras file renamed
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        Runtime(path)


def test_manifest_of_another_model_refused(files, tmp_path):
    # Right sha256 but the manifest describes the probe model's outputs.
    path = copy_pair(files["float32"]["deploy"], tmp_path)
    probe_manifest = load_manifest(manifest_path_for(files["float32"]["probe"]))
    probe_manifest["sha256"] = load_manifest(manifest_path_for(path))["sha256"]
    manifest_path_for(path).write_text(json.dumps(probe_manifest))
    with pytest.raises(ManifestError, match="does not describe"):
        Runtime(path)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema="faceprobe.manifest/0"), "schema"),
    (lambda m: m.pop("outputs"), "lacks outputs"),
    (lambda m: m.update(role="board"), "role"),
    (lambda m: m["outputs"][1].pop("channels"), "lacks channels"),
    (lambda m: m["input"].update(dtype="int8"), "'image' is float32 in the model, int8 in the manifest"),
])
def test_bad_manifest_refused(files, tmp_path, edit, message):
    path = copy_pair(files["float32"]["probe"], tmp_path)
    manifest = load_manifest(manifest_path_for(path))
    edit(manifest)
    manifest_path_for(path).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message):
        Runtime(path)
    manifest_path_for(path).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Runtime(path)
