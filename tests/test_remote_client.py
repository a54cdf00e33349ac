"""toolkit.remote: agent URLs, error reporting, and a fleet in which one agent is down."""

from __future__ import annotations

import socket
import threading

import pytest
from test_agent_server import TOKEN, fake_model

from device.agent import AgentServer
from toolkit import remote


def test_urls_are_normalised_and_deduplicated():
    assert remote.split_urls("board:8765, http://10.0.0.2:8765/ ,board:8765") == [
        "http://board:8765", "http://10.0.0.2:8765"]
    assert remote.split_urls(["https://a/"]) == ["https://a"]
    with pytest.raises(ValueError, match="no agent URL"):
        remote.split_urls(" , ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fleet_reports_the_agent_that_failed_and_keeps_the_others(tmp_path):
    server = AgentServer("127.0.0.1", 0, tmp_path / "store", token=TOKEN)
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = f"http://127.0.0.1:{server.server_address[1]}"
        down = f"http://127.0.0.1:{_free_port()}"
        tflite, _ = fake_model(tmp_path, 11)
        with pytest.raises(remote.AgentError, match=r"1 of 2 agents failed: .*:\d+: cannot reach the agent"):
            remote.deploy([up, down], tflite, token=TOKEN)
        assert len(server.store.ids()) == 1  # the reachable agent got the model all the same
        assert remote.deploy(up, tflite, token=TOKEN) == {up: server.store.ids()[0]}
        with pytest.raises(FileNotFoundError, match="no model at"):
            remote.deploy(up, tmp_path / "missing.tflite", token=TOKEN)
        with pytest.raises(ValueError, match="no manifest at"):
            remote.AgentClient(up, TOKEN).push(tflite, manifest=tmp_path / "nope.json")
    finally:
        server.shutdown()
        server.server_close()
