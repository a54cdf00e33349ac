"""The pre-release check end to end on a tiny model: a good int8 variant passes, a damaged one fails and
names the tap where the damage enters, thresholds from a file change the verdict, the fix search finds a
recipe that passes, and the HTML report needs no network."""

import json
import re

import numpy as np
import pytest

from toolkit.check import CheckOptions
from toolkit.check.damage import damaged_copy
from toolkit.check.runner import run_check
from toolkit.cli import main
from toolkit.modelfile import load_face_model, save_face_model
from toolkit.zoo import get_model

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
    and the flip fraction by 0.0083. The untrained model verifies the synthetic faces at chance (54 %),
    which the default data gate rightly calls inconclusive (tests/test_check_exit.py); these tests judge
    the check's mechanics (quantized against float), so they open the gate."""
    path = tmp_path_factory.mktemp("thresholds") / "small-set.toml"
    path.write_text("[identities]\nmax_accuracy_drop_pp = 2.5\nmax_flip_fraction = 0.05\n"
                    "[data]\nmin_float_verification_accuracy = 0.0\n")
    return path


@pytest.fixture(scope="module")
def good(model_path, thresholds, tmp_path_factory):
    out = tmp_path_factory.mktemp("check_good")
    return out, run_check(model_path, out, options=CheckOptions(sample=8, steps=3, features=True),
                          thresholds=thresholds,
                          search="never", progress=False)


def test_good_int8_variant_passes_at_all_three_levels(good):
    out, report = good
    assert report["passed"] is True and report["verdict"] == "pass"
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
    # The board's runtime configuration for each file: identities from the deploy file.
    assert host["info"]["deploy"]["kernels"] == "xnnpack" and host["info"]["deploy"]["runtime"]
    assert host["info"]["probe"]["machine"]
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["passed"] is True and summary["worst_tap"] in taps
    assert set(summary["verification_accuracy"]) == {"float", "quantized"}
    assert report["recipe"]["variant"] == "int8"
    manifest = json.loads((out / "export" / "model.int8.manifest.json").read_text())
    assert manifest["recipe"] == report["recipe"] and manifest["source"]["weights_sha256"]


def test_html_report_is_self_contained(good):
    out, _ = good
    page = (out / "report.html").read_text()
    assert "PASS" in page and "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert (out / "figures" / "taps.png").is_file()


def test_damaged_block_fails_is_localised_and_the_search_finds_a_fix(model_path, thresholds, good,
                                                                     tmp_path):
    """stage1/block1's activation range clipped to a tenth: the check fails and names stage1/block1 (not the
    untouched stem); the search re-exports from the float model, so its first candidate is sound again."""
    out, _ = good
    model, _ = load_face_model(model_path)
    export = out / "export"
    files = {"deploy": export / "model.int8.tflite", "probe": export / "model.int8.probe.tflite"}
    bad = damaged_copy(model, files, "stage1/block1", tmp_path / "bad", "range", 0.1)

    report = run_check(model_path, tmp_path / "out", options=CheckOptions(sample=8, features=False),
                       quantized=bad["deploy"], thresholds=thresholds, search="on-fail", progress=False)
    assert report["passed"] is False and report["verdict"] == "fail"
    summary = report["summary"]
    assert summary["first_broken_tap"] == summary["worst_tap"] == "stage1/block1"
    assert "host:worst_tap_sqnr_db" in summary["failed_checks"]
    taps = {r["tap"]: r for r in report["boards"][0]["taps"]}
    assert taps["stem/conv"]["sqnr_db"] > 20 > taps["stage1/block1"]["sqnr_db"]
    found = report["search"]
    assert found["best"] is not None and found["rows"][-1]["passed"]
    assert all(not r["passed"] for r in found["rows"][:-1])
    assert found["rows"][0]["name"] == "checked recipe"
    assert all(r["size_ratio"] > 0 and r["speedup_b1"] > 0 for r in found["rows"])
    assert (tmp_path / "out" / "search" / "recipe.toml").is_file()


def test_thresholds_file_changes_the_exit_code(model_path, thresholds, good, tmp_path, capsys):
    out, _ = good
    deploy = str(out / "export" / "model.int8.tflite")
    common = [str(model_path), "--no-features", "--quantized", deploy, "--sample", "8", "--search", "never",
              "--json"]
    assert main(["check", *common, "--thresholds", str(thresholds), "--out", str(tmp_path / "a")]) == 0
    passed = json.loads(capsys.readouterr().out)
    assert passed["passed"] is True
    strict = tmp_path / "strict.toml"
    strict.write_text(thresholds.read_text() + "[taps]\nmin_sqnr_db = 200.0\n")
    assert main(["check", *common, "--thresholds", str(strict), "--out", str(tmp_path / "b")]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["passed"] is False and "host:worst_tap_sqnr_db" in failed["failed_checks"]


def test_round_weights_puts_codes_on_the_coarser_grid(model_path, good):
    from tensorflow.lite.tools import flatbuffer_utils

    from toolkit.check.damage import _block_convs, round_weights
    from toolkit.export.convert import block_layers

    out, _ = good
    model, _ = load_face_model(model_path)
    content = (out / "export" / "model.int8.tflite").read_bytes()
    layers = block_layers(model, "stage1/block1")
    rounded = flatbuffer_utils.convert_bytearray_to_object(bytearray(round_weights(content, layers, 4)))
    tensors = rounded.subgraphs[0].tensors
    for op in _block_convs(rounded, layers):
        codes = np.frombuffer(bytes(bytearray(rounded.buffers[tensors[op.inputs[1]].buffer].data)), np.int8)
        assert set(np.unique(codes).tolist()) <= set(range(-128, 128, 16)) | {127}


def test_search_order_puts_float_depthwise_after_calibration_and_before_blocks():
    from toolkit.check.search import candidates
    from toolkit.export import Calibration, Recipe

    base = Recipe("int8", calibration=Calibration(count=200))
    localisation = {"first_broken_tap": "stage2/block1",
                    "ranking": [{"tap": "stage2/block1"}, {"tap": "stem/conv"}]}
    named = [name for name, _ in candidates(base, localisation, 300, depthwise=True)]
    assert named == ["calibration: every face", "calibration: percentile 99.99 ranges",
                     "calibration: percentile 99.9 ranges", "depthwise convs in float",
                     "keep float: stage2/block1", "keep float: stage2/block1, stem/conv",
                     "int16 activations everywhere", "float16 weights"]
    recipes = dict(candidates(base, localisation, 300, depthwise=True))
    assert recipes["depthwise convs in float"].float_ops == ("DEPTHWISE_CONV_2D",)
    assert "depthwise convs in float" not in dict(candidates(base, localisation, 300))
