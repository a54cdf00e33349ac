"""Cross-check of the tap level's RMSE/scale against tf.lite.experimental.QuantizationDebugger.

Runs scripts/bench/quant_debugger.py in-process on an untrained tiny model at 48 px.
"""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "quant_debugger.py"
# The first tap: the debugger feeds the float op the float input, as faceprobe does, so only kernel
# rounding separates the two (measured: 6e-8 relative on this machine's XNNPACK kernels).
FIRST_TAP_TOLERANCE = 0.01
# Deeper taps: faceprobe's end-to-end error holds the debugger's local error plus what came before.
DEEPER_TOLERANCE = 0.01


def _load_script():
    spec = importlib.util.spec_from_file_location("quant_debugger", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _load_script().main(["--arch", "tiny", "--size", "48", "--images", "8",
                                    "--calibration-size", "24", "--json"])
    assert code == 0
    return json.loads(out.getvalue())


def test_every_tap_found_in_the_debugger_with_the_export_scales(result):
    s = result["summary"]
    assert s["taps_compared"] == s["taps_total"] == 3
    assert [r["tap"] for r in result["taps"]] == ["stem/conv", "stage1/block1", "stage2/block1"]
    # Same calibration sample and quantizer: the debugger's model carries the exported scales.
    assert s["max_scale_relative_difference"] < 1e-5
    for r in result["taps"]:
        # A layer's own error is of the order of its output rounding (1/sqrt(12) ~ 0.29 of a step); another
        # tensor's statistics or scale would land an order of magnitude away.
        assert 0.15 < r["debugger_rmse_over_scale"] < 1.0, r


def test_first_tap_agrees(result):
    first = result["taps"][0]
    assert result["summary"]["first_tap"] == "stem/conv"
    assert first["ratio"] == pytest.approx(1.0, abs=FIRST_TAP_TOLERANCE)
    assert first["faceprobe_rmse_over_scale"] == pytest.approx(first["debugger_rmse_over_scale"],
                                                               rel=FIRST_TAP_TOLERANCE)


def test_deeper_taps_at_least_the_debuggers_local_error(result):
    for r in result["taps"][1:]:
        assert r["faceprobe_rmse_over_scale"] >= r["debugger_rmse_over_scale"] * (1 - DEEPER_TOLERANCE), r
    ratios = sorted(r["ratio"] for r in result["taps"])
    assert result["summary"]["median_ratio"] == pytest.approx(ratios[1])
    assert result["summary"]["deeper_min_ratio"] >= 1 - DEEPER_TOLERANCE


def test_no_comparable_tap_is_an_error():
    rows = [{"tap": "stem/conv", "ratio": None, "debugger_scale": None, "faceprobe_scale": 0.1}]
    with pytest.raises(RuntimeError, match="NumericVerify"):
        _load_script().summarize(rows)
