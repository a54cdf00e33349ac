"""The agent over TLS on loopback, and what crosses the network: certificates made here with openssl,
pinned and remembered fingerprints, tokens kept off plain HTTP beyond loopback and out of the log."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_agent_server import ROOT, TOKEN, fake_model

from device.agent import AgentServer
from device.tls import TLSFiles, cert_fingerprint, normalize_fingerprint
from toolkit.cli import main as faceprobe
from toolkit.remote import AgentClient, AgentError, Trust

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="makes certificates with openssl")


def make_pair(folder: Path, name: str = "agent") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={name}", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def serve_tls(store: Path, tls: TLSFiles, port: int = 0) -> tuple[AgentServer, str]:
    server = AgentServer("127.0.0.1", port, store, token=TOKEN, tls=tls)
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://127.0.0.1:{server.server_address[1]}"


def stop(server: AgentServer) -> None:
    server.shutdown()
    server.server_close()


@needs_openssl
def test_tls_with_a_pinned_certificate_and_a_wrong_fingerprint_refused(tmp_path):
    cert, key = make_pair(tmp_path / "pki")
    other, _ = make_pair(tmp_path / "pki", "other")
    server, url = serve_tls(tmp_path / "store", TLSFiles(cert, key))
    try:
        right = cert_fingerprint(cert)
        assert server.tls.fingerprint == right
        client = AgentClient(url, TOKEN, trust=Trust((right,)))
        health = client.health()
        assert health["tls_fingerprint"] == right
        tflite, _ = fake_model(tmp_path, 1)
        assert client.push(tflite) == server.store.ids()[0]  # a whole upload over TLS
        wrong = AgentClient(url, TOKEN, trust=Trust((cert_fingerprint(other),)))
        with pytest.raises(AgentError, match="not one pinned with --agent-fingerprint"):
            wrong.health()
        with pytest.raises(AgentError, match="cannot reach"):  # plain HTTP to a TLS agent gets nowhere
            AgentClient(url.replace("https", "http"), TOKEN).health()
        assert client.health()["status"] == "ok"  # the failed handshakes left the agent serving
    finally:
        stop(server)


@needs_openssl
def test_a_fingerprint_is_remembered_on_first_use_and_a_change_refused(tmp_path, capsys):
    known = tmp_path / "known_agents"
    trust = Trust(known_agents=known)
    server, url = serve_tls(tmp_path / "store", TLSFiles())  # the store's own self-signed pair
    fingerprint = server.tls.fingerprint
    port = server.server_address[1]
    try:
        assert AgentClient(url, TOKEN, trust=trust).health()["tls_fingerprint"] == fingerprint
        assert f"127.0.0.1:{port} {fingerprint}" in known.read_text()
        assert "first contact" in capsys.readouterr().err
        AgentClient(url, TOKEN, trust=trust).models()  # known now: silent
        assert "first contact" not in capsys.readouterr().err
    finally:
        stop(server)
    key = tmp_path / "store" / "tls" / "key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    server, url = serve_tls(tmp_path / "store", TLSFiles(), port=port)  # kept: the same pair again
    try:
        assert server.tls.fingerprint == fingerprint
        assert AgentClient(url, TOKEN, trust=trust).health()["status"] == "ok"
    finally:
        stop(server)
    cert, key = make_pair(tmp_path / "pki", "replaced")
    server, url = serve_tls(tmp_path / "store2", TLSFiles(cert, key), port=port)  # same address, new key
    try:
        with pytest.raises(AgentError, match="CERTIFICATE HAS CHANGED"):
            AgentClient(url, TOKEN, trust=trust).health()
        assert known.read_text().count(f"127.0.0.1:{port}") == 1  # the remembered one stands
        pinned = Trust((cert_fingerprint(cert),), known_agents=known)
        assert AgentClient(url, TOKEN, trust=pinned).health()["status"] == "ok"
    finally:
        stop(server)


def test_a_token_is_never_sent_over_plain_http_beyond_loopback(tmp_path):
    for url in ("http://192.0.2.7:8765", "board.local:8765", "http://[2001:db8::1]:8765"):
        with pytest.raises(ValueError, match="refusing to send the agent's token in clear text"):
            AgentClient(url, TOKEN)
        AgentClient(url, None)  # no token, nothing to leak
        AgentClient(url, TOKEN, trust=Trust(insecure=True))  # the user said so
    AgentClient("http://127.0.0.1:8765", TOKEN)
    AgentClient("https://192.0.2.7:8765", TOKEN)
    code = faceprobe(["deploy", str(fake_model(tmp_path, 2)[0]), "--agent", "http://192.0.2.7:8765",
                      "--token", TOKEN])
    assert code == 2
    with pytest.raises(ValueError, match="not a SHA-256 certificate fingerprint"):
        Trust.from_options("12:34")
    assert Trust.from_options("sha256//" + "ab" * 32).fingerprints == (normalize_fingerprint("AB" * 32),)


def test_the_agent_needs_tls_beyond_loopback_unless_insecure(tmp_path):
    with pytest.raises(ValueError, match="without TLS"):
        AgentServer("0.0.0.0", 0, tmp_path / "store", token=TOKEN)
    server = AgentServer("0.0.0.0", 0, tmp_path / "store", token=TOKEN, insecure=True)
    server.server_close()
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    cli = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                          "--store", str(tmp_path / "store"), "--token-file", str(token)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 2 and "--tls-self-signed" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    cli = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--store", str(tmp_path / "store"),
                          "--tls-cert", str(tmp_path / "missing.pem")], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert cli.returncode == 2 and "go together" in cli.stderr


@needs_openssl
def test_serve_prints_its_fingerprint_and_keeps_the_pair(tmp_path):
    def first_lines() -> str:
        proc = subprocess.Popen([sys.executable, "-m", "device.cli", "serve", "--port", "0", "--store",
                                 str(tmp_path / "store"), "--tls-self-signed"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            return proc.stdout.readline() + proc.stdout.readline()
        finally:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()

    first, again = first_lines(), first_lines()
    assert "https://127.0.0.1:" in first
    printed = re.search(r"fingerprint ([0-9A-F:]{95})", first).group(1)
    assert printed == cert_fingerprint(tmp_path / "store" / "tls" / "cert.pem")
    assert printed in again


def test_no_query_string_reaches_the_log(tmp_path, capsys):
    server = AgentServer("127.0.0.1", 0, tmp_path / "store", token=TOKEN)
    server.quiet = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for path in ("/health?token=LEAKED1", "/nowhere?token=LEAKED2"):
            with pytest.raises(AgentError):
                AgentClient(url, None)._request("GET", path)
        with pytest.raises(AgentError, match="405"):
            AgentClient(url, TOKEN)._request("PUT", "/models?token=LEAKED3")
    finally:
        stop(server)
    err = capsys.readouterr().err
    assert "/health?" in err and "401" in err
    assert "LEAKED" not in err
