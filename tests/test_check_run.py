"""The pre-release check end to end on a tiny model: a good int8 variant passes, a deliberately broken one
fails and names the tap where the damage enters, thresholds from a file change the verdict, and the HTML
report needs no network."""

import json
import re

import numpy as np
import pytest

from toolkit.check.runner import run_check
from toolkit.cli import main
from toolkit.export import export_model
from toolkit.modelfile import save_face_model
from toolkit.zoo import get_model, get_tap

SIZE = 48


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)  # the untrained weights decide the margins below: fix them
    d = tmp_path_factory.mktemp("check_model")
    return save_face_model(get_model("tiny", input_size=SIZE), d / "model.keras")


@pytest.fixture(scope="module")
def thresholds(tmp_path_factory):
    """The defaults, but with identity allowances that fit this small check set and an untrained model:
    on its 120 pairs a single flipped pair moves the verification accuracy by 0.83 percentage points
    and the flip fraction by 0.0083."""
    path = tmp_path_factory.mktemp("thresholds") / "small-set.toml"
    path.write_text("[identities]\nmax_accuracy_drop_pp = 2.5\nmax_flip_fraction = 0.05\n")
    return path


@pytest.fixture(scope="module")
def good(model_path, thresholds, tmp_path_factory):
    out = tmp_path_factory.mktemp("check_good")
    return out, run_check(model_path, out, sample=8, steps=3, thresholds=thresholds, suggest="never",
                          progress=False)


def test_good_int8_variant_passes_at_all_three_levels(good):
    out, report = good
    assert report["passed"] is True
    host = report["boards"][0]
    assert {v["level"] for v in host["verdicts"]} == {"taps", "features", "identities"}
    assert all(v["passed"] for v in host["verdicts"])
    taps = {r["tap"]: r for r in host["taps"]}
    assert set(taps) == {"stem/conv", "stage1/block1", "stage2/block1"}
    # int8 rounding of the first tap: near the ideal 1/sqrt(12) of uniform rounding, not far above it.
    assert 0.25 < taps["stem/conv"]["rmse_over_scale"] < 1.0
    assert taps["stem/conv"]["sqnr_db"] > 20
    feats = host["features"]["summary"]
    assert feats["estimator_change_correlation"] > 0.9  # FD on float TFLite tracks host autodiff
    ident = host["identities"]
    assert ident["embedding_cosine_mean"] > 0.95
    assert ident["float"]["pairs"] == ident["quantized"]["pairs"] > 0
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["passed"] is True and summary["worst_tap"] in taps
    assert set(summary["verification_accuracy"]) == {"float", "quantized"}


def test_html_report_is_self_contained(good):
    out, _ = good
    page = (out / "report.html").read_text()
    assert "PASS" in page and "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert (out / "figures" / "taps.png").is_file()


def test_broken_layer_fails_and_is_localised(model_path, thresholds, tmp_path):
    """Perturb the weights feeding stage1/block1 in a copy, export that as the 'quantized' model: the check
    fails, names stage1/block1 (not the untouched stem) and the keep-float fix passes again."""
    import keras

    broken = keras.saving.load_model(model_path, compile=False)
    tap_layer = broken.get_layer(get_tap(broken, "stage1/block1").layer_name)
    bn = tap_layer._inbound_nodes[0].parent_nodes[0].operation
    conv = bn._inbound_nodes[0].parent_nodes[0].operation
    kernel = conv.get_weights()[0]
    rng = np.random.default_rng(0)
    conv.set_weights([kernel + rng.normal(0, kernel.std(), kernel.shape).astype(np.float32)])
    bad_path = save_face_model(broken, tmp_path / "broken" / "model.keras")
    calibration = np.random.default_rng(1).integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
    files = export_model(bad_path, tmp_path / "broken_export", variants=("int8",), calibration=calibration)

    report = run_check(model_path, tmp_path / "out", sample=8, features=False,
                       quantized=files["int8"]["deploy"], thresholds=thresholds, suggest="always",
                       progress=False)
    assert report["passed"] is False
    summary = report["summary"]
    assert summary["first_broken_tap"] == "stage1/block1"
    assert summary["worst_tap"] == "stage1/block1"
    assert "host:worst_tap_sqnr_db" in summary["failed_checks"]
    taps = {r["tap"]: r for r in report["boards"][0]["taps"]}
    assert taps["stem/conv"]["sqnr_db"] > 20 > taps["stage1/block1"]["sqnr_db"]
    s = report["suggestion"]
    assert s["summary"]["action"] == "keep_float" and s["keep_float"] == ["stage1/block1"]
    assert s["summary"]["passed_after"] is True
    assert s["after"]["deploy_bytes"] > 0 and s["summary"]["latency_ratio"] > 0


def test_thresholds_file_changes_the_exit_code(model_path, thresholds, good, tmp_path, capsys):
    out, _ = good
    deploy = str(out / "export" / "model.int8.tflite")
    common = [str(model_path), "--no-features", "--quantized", deploy, "--sample", "8", "--suggest", "never",
              "--json"]
    assert main(["check", *common, "--thresholds", str(thresholds), "--out", str(tmp_path / "a")]) == 0
    passed = json.loads(capsys.readouterr().out)
    assert passed["passed"] is True
    strict = tmp_path / "strict.toml"
    strict.write_text(thresholds.read_text() + "[taps]\nmin_sqnr_db = 200.0\n")
    assert main(["check", *common, "--thresholds", str(strict), "--out", str(tmp_path / "b")]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["passed"] is False and "host:worst_tap_sqnr_db" in failed["failed_checks"]
