"""The check's speed level on a loopback agent: every board reports the deploy file's latency and memory
beside float32's, a quantized file slower than float32 is warned about by board, `[speed] min_speedup`
fails the check, and the fix search prices recipes where --price-on says."""

from __future__ import annotations

import json
import threading

import pytest

from device.agent import AgentServer
from toolkit.check.gate import load_thresholds
from toolkit.check.speed import slower_warning, speed_verdicts
from toolkit.cli import main

SIZE = 32
SPEED_KEYS = {"latency_ms", "float32_latency_ms", "speedup_b1", "peak_rss_mib", "threads"}


@pytest.fixture(scope="module")
def agent():
    import tempfile

    with tempfile.TemporaryDirectory() as store:
        server = AgentServer("127.0.0.1", 0, store)
        server.quiet = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tiny(untrained_int8):
    """An untrained tiny model and its int8 files: its int8 kernels run ~4x slower than float32 on x86
    XNNPACK (per-op overhead dominates a model this small), so it is the quantized file that is slower."""
    tmp, model, deploy = untrained_int8(SIZE)
    gate = tmp / "t.toml"  # an untrained model verifies at chance: open the data gate
    gate.write_text("[data]\nmin_float_verification_accuracy = 0.0\n")
    return tmp, model, deploy, gate


@pytest.fixture(scope="module")
def checked(agent, tiny):
    tmp, model, deploy, gate = tiny
    out = tmp / "check"
    code = main(["check", str(model), "--quantized", str(deploy), "--agent", agent, "--thresholds", str(gate),
                 "--sample", "4", "--no-features", "--search", "always", "--price-on", agent,
                 "--out", str(out), "--json"])
    return code, json.loads((out / "report.json").read_text()), out


def test_every_board_reports_speed_beside_float32(agent, checked):
    code, report, out = checked
    assert code in (0, 1)
    host, board = report["boards"]
    assert (host["name"], board["name"]) == ("host", agent)
    for b in (host, board):
        speed = b["speed"]
        assert SPEED_KEYS <= set(speed)
        assert speed["speedup_b1"] == pytest.approx(speed["float32_latency_ms"] / speed["latency_ms"])
        assert speed["peak_rss_mib"] > 0 and speed["float32_peak_rss_mib"] > 0
        assert speed["bytes"] > 0 and speed["float32_bytes"] > 0
        assert list(speed["stage_shares"]) == ["first", "middle", "last"]
        assert report["summary"]["speed"][b["name"]]["speedup_b1"] == speed["speedup_b1"]
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 4 and "Batch-1 latency" in page and "Share of the latency by stage" in page


def test_a_quantized_file_slower_than_float32_is_warned_about_by_board(checked):
    """Each board is warned about exactly when its own timing found the quantized file slower. (Which way
    the tiny model's timing falls depends on the machine's load, so the rule is checked both ways below.)"""
    _, report, _ = checked
    warnings = report["summary"]["speed_warnings"]
    for board in report["boards"]:
        named = f"on {board['name']} the int8 file runs slower than float32"
        assert any(w.startswith(named) for w in warnings) == (board["speed"]["speedup_b1"] < 1.0)
    slow = {"speedup_b1": 0.25, "latency_ms": 0.4, "float32_latency_ms": 0.1}
    with pytest.warns(UserWarning):
        message = slower_warning("pi", slow, "int8")
    assert message.startswith("on pi the int8 file runs slower than float32 (0.400 ms against 0.100 ms")
    assert slower_warning("pi", {**slow, "speedup_b1": 1.0}, "int8") is None


def test_the_search_prices_where_it_is_told(agent, checked):
    _, report, _ = checked
    found = report["search"]
    assert found["priced_on"] == agent and report["summary"]["search"]["priced_on"] == agent
    for row in found["rows"]:
        assert row["speedup_b1"] == pytest.approx(row["float32_latency_ms"] / row["latency_ms"])


def test_min_speedup_is_off_by_default_and_fails_the_check_when_set(tiny, checked, tmp_path):
    _, report, _ = checked
    speed = report["boards"][0]["speed"]
    assert report["thresholds"]["speed"]["min_speedup"] == 0.0
    assert not any(v["name"] == "speedup_b1" for b in report["boards"] for v in b["verdicts"])
    strict = tmp_path / "strict.toml"
    strict.write_text("[speed]\nmin_speedup = 1000.0\n")
    verdicts = speed_verdicts(speed, load_thresholds(strict))
    assert [(v["name"], v["passed"]) for v in verdicts] == [("speedup_b1", False)]
    # End to end: no file is a thousand times faster than float32, so the check fails on speed alone.
    _, model, deploy, gate = tiny
    strict.write_text(gate.read_text() + "[speed]\nmin_speedup = 1000.0\n")
    code = main(["check", str(model), "--quantized", str(deploy), "--thresholds", str(strict),
                 "--sample", "4", "--no-features", "--search", "never", "--out", str(tmp_path / "o"),
                 "--json"])
    failed = json.loads((tmp_path / "o" / "report.json").read_text())["summary"]["failed_checks"]
    assert code == 1 and "host:speedup_b1" in failed


def test_an_unreachable_price_board_is_named_before_any_work(tiny, tmp_path, capsys):
    _, model, deploy, gate = tiny
    code = main(["check", str(model), "--quantized", str(deploy), "--price-on", "http://127.0.0.1:9",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "http://127.0.0.1:9: cannot reach the agent" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
