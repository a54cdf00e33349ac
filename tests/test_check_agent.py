"""Host and a loopback board agent judge the same int8 files the same way: identities and the disagreement
ascent from the deploy file on both (the board receives the float file too), taps from the probe file on
both, each board's runtime configuration recorded."""

from __future__ import annotations

import json
import threading

import pytest

from device.agent import AgentServer
from toolkit.cli import main

SIZE = 32


@pytest.fixture()
def agent(tmp_path):
    server = AgentServer("127.0.0.1", 0, tmp_path / "store")
    server.quiet = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_host_and_loopback_agent_give_the_same_verdict(agent, untrained_int8, tmp_path, capsys):
    _, model, deploy = untrained_int8(SIZE)
    gate = tmp_path / "t.toml"  # an untrained model verifies at chance: open the data gate
    gate.write_text("[data]\nmin_float_verification_accuracy = 0.0\n")
    code = main(["check", str(model), "--quantized", str(deploy), "--agent", agent,
                 "--thresholds", str(gate), "--sample", "4", "--no-features", "--search", "never",
                 "--disagreement", "--disagreement-images", "1",
                 "--out", str(tmp_path / "o"), "--json"])
    assert code in (0, 1)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    host, board = report["boards"]
    assert board["name"] == agent
    assert host["passed"] == board["passed"]
    assert [v["passed"] for v in host["verdicts"]] == [v["passed"] for v in board["verdicts"]]
    # Same deploy file, same kernels: the identity numbers agree to rounding.
    for key in ("accuracy_drop_pp", "flip_fraction", "embedding_cosine_mean"):
        assert host["identities"][key] == pytest.approx(board["identities"][key], abs=1e-6), key
    # The board received the float file too and ran the same disagreement ascent on its deploy file.
    assert board["disagreement"]["summary"] == host["disagreement"]["summary"]
    assert host["disagreement"]["summary"]["worst_case_embedding_cosine"] < 1.0
    for h, b in zip(host["taps"], board["taps"], strict=True):
        assert h["sqnr_db"] == pytest.approx(b["sqnr_db"], rel=1e-6)
    # Each file's runtime configuration, from the board's own job results.
    for role in ("deploy", "probe"):
        assert board["info"][role]["kernels"] == host["info"][role]["kernels"] == "xnnpack"
        assert board["info"][role]["runtime"] and board["info"][role]["machine"]
    assert "threads" in board["info"]["deploy"]
