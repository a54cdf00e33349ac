"""`faceprobe check` exit codes through the CLI: 0 pass, 1 a failing verdict, 2 everything else (bad
input, a crash, a file exported from another model, an unreachable board, faces the float model cannot
verify); and scripts/prerelease_check.sh passes on exactly those."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.export import export_model
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model

SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


def _model(path: Path, seed: int) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    return save_face_model(get_model("tiny", input_size=SIZE, embedding_dim=8), path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return _model(d / "a" / "model.keras", 0), _model(d / "b" / "model.keras", 1)


@pytest.fixture(scope="module")
def open_gate(tmp_path_factory):
    """Thresholds that let an untrained model (chance-level verification) past the data gate."""
    path = tmp_path_factory.mktemp("t") / "open.toml"
    path.write_text("[data]\nmin_float_verification_accuracy = 0.0\n")
    return path


def _faces(root: Path, people: int, images: int, seed: int) -> Path:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(seed)
    for p in range(people):
        (root / f"p{p}").mkdir(parents=True)
        for i in range(images):
            pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            cv2.imwrite(str(root / f"p{p}" / f"{i}.png"), pixels)
    return root


@pytest.mark.parametrize("args, message", [
    (["--sample", "0"], "argument --sample: must be a positive integer"),
    (["--feature-images", "0"], "argument --feature-images: must be a positive integer"),
    (["--data", "no/such/folder"], "no folder of faces at"),
    (["--recipe", "no-such-recipe.toml"], "no recipe file at"),
    (["--variant", "float16", "--keep-float", "stem/conv"], "applies to the int8 variant"),
])
def test_bad_input_exits_2_with_a_message(models, tmp_path, capsys, args, message):
    assert main(["check", str(models[0]), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_out_naming_a_file_exits_2_and_keeps_the_file(models, tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("keep me")
    assert main(["check", str(models[0]), "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_bad_recipe_key_is_named(models, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('variant = "int8"\n[calibration]\ncuont = 3\n')
    assert main(["check", str(models[0]), "--out", str(tmp_path / "o"), "--recipe", str(recipe)]) == 2
    assert "calibration.cuont" in capsys.readouterr().err


def test_a_crash_exits_2_not_1(models, open_gate, tmp_path, capsys, monkeypatch):
    import toolkit.check.runner as runner

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(runner, "export_keras", broken)
    code = main(["check", str(models[0]), "--out", str(tmp_path / "o"), "--thresholds", str(open_gate),
                 "--no-features"])
    assert code == 2
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_file_from_another_model_exits_2(models, tmp_path, capsys):
    calibration = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    other = export_model(models[1], tmp_path / "b", ["int8"], calibration=calibration, progress=False)
    code = main(["check", str(models[0]), "--quantized", str(other["int8"]["deploy"]),
                 "--out", str(tmp_path / "o"), "--no-features"])
    assert code == 2
    err = capsys.readouterr().err
    assert "was exported from" in err and str(models[0]) in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_same_weights_saved_again_are_the_same_source(models, tmp_path):
    """The fingerprint is of the weights: a re-saved model (new zip bytes) still owns its exports."""
    from device.manifest import load_manifest, manifest_path_for, sha256_file
    from toolkit.export import validate_source
    from toolkit.modelfile import load_face_model

    calibration = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    files = export_model(models[0], tmp_path / "a", ["int8"], calibration=calibration, progress=False)
    model, _ = load_face_model(models[0])
    again = save_face_model(model, tmp_path / "again" / "model.keras")
    manifest = load_manifest(manifest_path_for(files["int8"]["deploy"]))
    assert manifest["source"]["sha256"] == sha256_file(models[0])
    validate_source(manifest, load_face_model(again)[0], again, "deploy")  # no error
    with pytest.raises(ValueError, match="was exported from"):
        validate_source(manifest, load_face_model(models[1])[0], models[1], "deploy")


def test_noise_faces_are_inconclusive_exit_2(models, tmp_path, capsys):
    noise = _faces(tmp_path / "noise", people=6, images=6, seed=0)
    code = main(["check", str(models[0]), "--data", str(noise), "--out", str(tmp_path / "o"),
                 "--no-features"])
    assert code == 2
    out = capsys.readouterr().out
    assert "CANNOT JUDGE" in out and "min_float_verification_accuracy" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["verdict"] == "inconclusive" and report["passed"] is None
    assert report["data"]["float_verification_accuracy"] < 0.6
    assert "CANNOT JUDGE" in (tmp_path / "o" / "report.html").read_text()


def test_unreachable_board_exits_2(models, open_gate, tmp_path, capsys):
    code = main(["check", str(models[0]), "--out", str(tmp_path / "o"), "--thresholds", str(open_gate),
                 "--no-features", "--sample", "4", "--search", "never", "--agent", "http://127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the agent" in capsys.readouterr().err


# --- scripts/prerelease_check.sh, with a stand-in for faceprobe ------------------------------------------

FAKE = """#!/usr/bin/env bash
# stand-in for faceprobe: exit $FAKE_RC, writing a report with verdict $FAKE_VERDICT when it is set
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out="$a"; prev="$a"; done
if [ -n "${FAKE_VERDICT:-}" ]; then
  mkdir -p "$out"; echo "{\\"verdict\\": \\"$FAKE_VERDICT\\"}" > "$out/report.json"
fi
exit "$FAKE_RC"
"""


@pytest.fixture()
def script(tmp_path):
    """The real script beside a stub _venv.sh (the real one installs into .venv), faceprobe faked."""
    d = tmp_path / "scripts"
    d.mkdir()
    shutil.copy(ROOT / "scripts" / "prerelease_check.sh", d)
    stub = f'set -euo pipefail\nexport PATH="{tmp_path / "bin"}:$PATH"\ncd "{tmp_path}"\n'
    (d / "_venv.sh").write_text(stub)
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "faceprobe"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return d / "prerelease_check.sh"


@pytest.mark.parametrize("rc, verdict, expected", [
    (0, "pass", 0),
    (1, "fail", 1),       # a verdict
    (1, None, 2),         # exit 1 with no verdict written: a crash, not a quantization failure
    (1, "inconclusive", 2),
    (2, None, 2),
    (137, None, 2),       # killed
])
def test_prerelease_script_passes_on_only_verdicts(script, tmp_path, rc, verdict, expected):
    env = {**os.environ, "FAKE_RC": str(rc), "FAKE_VERDICT": verdict or ""}
    done = subprocess.run(["bash", str(script), "model.keras", "--out", str(tmp_path / "rep")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == expected, done.stderr
