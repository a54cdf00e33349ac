"""The host side of the board emulation (scripts/board/board.py), without QEMU: the prepared model and
its int8 export, the outputs and their comparison, the JUnit counts, and the check emulate.sh runs
against a host agent and a "board" agent (here both on loopback, so their verdicts must agree)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from device.agent import AgentServer

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "scripts" / "board" / "board.py"
TOKEN = "board-test-token"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


def board(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BOARD), *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("board")
    done = board("prepare", str(out), "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture()
def agents(tmp_path):
    servers = [AgentServer("127.0.0.1", 0, tmp_path / f"store{i}", token=TOKEN) for i in range(2)]
    for server in servers:
        server.quiet = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ",".join(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    for server in servers:
        server.shutdown()
        server.server_close()


def test_prepare_writes_the_model_its_export_and_the_host_outputs(prepared):
    for name in ("model.path", "inputs.npy", "host_outputs.npz", "host_outputs_reference.npz",
                 "export/model.int8.tflite", "export/model.int8.probe.tflite"):
        assert (prepared / name).is_file(), name
    assert Path((prepared / "model.path").read_text()).is_file()


def test_outputs_on_this_machine_match_the_prepared_ones(prepared, tmp_path):
    got = tmp_path / "out.npz"
    probe = prepared / "export" / "model.int8.probe.tflite"
    done = board("outputs", str(probe), str(prepared / "inputs.npy"), str(got))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["runtime"]
    compared = board("compare", str(prepared / "host_outputs.npz"), str(got))
    assert json.loads(compared.stdout)["max_abs_diff"] == 0.0  # the same kernels on the same machine
    reference = board("compare", str(prepared / "host_outputs_reference.npz"), str(got))
    assert json.loads(reference.stdout)["max_abs_diff"] < 0.5  # reference kernels: within int8 rounding


def test_junit_counts(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1"/></testsuites>')
    assert json.loads(board("junit", str(xml)).stdout) == {"tests_passed": 3, "tests_failed": 1,
                                                           "tests_skipped": 1}
    assert json.loads(board("junit", str(tmp_path / "none.xml")).stdout)["tests_failed"] is None


def test_the_check_emulate_runs_gives_matching_verdicts(prepared, agents, tmp_path):
    done = board("check", str(prepared), agents, TOKEN, str(tmp_path / "check"))
    assert done.returncode == 0, (tmp_path / "check.log").read_text()[-3000:]
    verdict = json.loads(done.stdout)
    assert verdict["matches"] is True and verdict["matches_host_deploy"] is True
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    assert len(report["boards"]) == 3 and report["verdict"] in ("pass", "fail")


def test_a_check_that_cannot_judge_exits_2(prepared, tmp_path):
    done = board("check", str(prepared), "http://127.0.0.1:9", TOKEN, str(tmp_path / "check"))
    assert done.returncode == 2 and json.loads(done.stdout)["matches"] is False
