"""`faceprobe export`: files and JSON out, clear errors and exit codes, nothing written on failure."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from toolkit import cli
from toolkit.export import verify
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(3)
    return save_face_model(get_model("tiny", input_size=32, embedding_dim=8),
                           tmp_path_factory.mktemp("m") / "model.keras")


def test_export_json_with_calibration_folder(model_path, tmp_path, capsys):
    # Identity folders of PNG faces, as `faceprobe data` or a user's dataset provides them.
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for person in range(3):
        folder = tmp_path / "faces" / f"p{person}"
        folder.mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    code = cli.main(["export", str(model_path), "--variants", "int8", "--out", str(out),
                     "--calibration", str(tmp_path / "faces"), "--calibration-size", "10",
                     "--keep-float", "stem/conv", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)["variants"]
    assert list(summary) == ["int8"]
    assert sorted(p.name for p in out.iterdir()) == [
        "model.int8.manifest.json", "model.int8.probe.manifest.json", "model.int8.probe.tflite",
        "model.int8.tflite"]
    for variant in summary:
        for role in ("deploy", "probe"):
            entry = summary[variant][role]
            assert entry["bytes"] == (out / entry["file"].split("/")[-1]).stat().st_size
    assert summary["int8"]["probe"]["verification"]["deploy_probe_cosine"] >= verify.AGREEMENT_COSINE["int8"]
    manifest = json.loads((out / "model.int8.probe.manifest.json").read_text())
    assert manifest["converter"]["options"]["calibration_images"] == 10
    assert manifest["keep_float"] == ["stem/conv"]


@pytest.mark.parametrize("args, message", [
    (["--variants", "int4"], "unknown variant 'int4'"),
    (["--variants", "int8"], "int8 needs calibration images"),
    (["--variants", "float32", "--keep-float", "stem/conv"], "applies to the int8 variant"),
    (["--variants", "float32,int8", "--keep-float", "nope"], "unknown tap 'nope'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(model_path, tmp_path, capsys, args, message):
    assert cli.main(["export", str(model_path), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_exits_2(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "none.keras"), "--out", str(tmp_path)]) == 2
    assert "no model at" in capsys.readouterr().err


def test_failed_verification_writes_nothing(model_path, tmp_path, capsys, monkeypatch):
    # A float32 file can never match Keras to zero relative error: the check must fire.
    monkeypatch.setattr(verify, "KERAS_REL_TOLERANCE", 0.0)
    out = tmp_path / "out"
    assert cli.main(["export", str(model_path), "--variants", "float32", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "failed verification, nothing written" in err and "differs from Keras" in err
    assert not out.exists()
