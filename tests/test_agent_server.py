"""The board agent over real loopback HTTP: auth, validation, limits, malformed requests, cut-off uploads.

Uploads here are a real tiny model (tests/data) with random trailing bytes, so each is a distinct model
the sandbox can load. Jobs on exported models: test_agent_jobs.py; hostile input: test_agent_hardening.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from device.agent import AgentServer, is_loopback
from device.ascent import run_plan
from device.plan import ProbePlan
from device.runtime import Runtime
from toolkit.remote import AgentClient, AgentError

TOKEN = "s3cret-token-for-tests"
DCT2 = {"kind": "dct", "size": 2}
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny16.float32.probe.tflite"
TINY_MANIFEST = TINY.with_name("tiny16.float32.probe.manifest.json")


def fake_model(directory: Path, seed: int, size: int = 4096) -> tuple[Path, Path]:
    """A real tiny model (16 px, exported by ``export_tiny``) made distinct by ``size`` trailing random bytes
    (the flatbuffer ignores them), and a copy of its manifest that names the new sha256."""
    body = TINY.read_bytes() + np.random.default_rng(seed).bytes(size)
    tflite = directory / f"m{seed}.tflite"
    tflite.write_bytes(body)
    manifest = {**json.loads(TINY_MANIFEST.read_text()), "model": f"fake{seed}",
                "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body), "file": tflite.name}
    mpath = directory / f"m{seed}.manifest.json"
    mpath.write_text(json.dumps(manifest))
    return tflite, mpath


@pytest.fixture()
def agent(tmp_path):
    server = AgentServer("127.0.0.1", 0, tmp_path / "store", token=TOKEN, max_upload_bytes=1 << 20)
    server.quiet = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def raw_request(port: int, data: bytes, read: bool = True) -> tuple[int, dict | None]:
    """Send raw bytes; return (status, JSON body) of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if not read:
            return 0, None
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body) if body else None


def stored_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "models").rglob("*") if p.is_file())


def test_loopback_detection_and_refusal_without_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.7") and not is_loopback("")
    with pytest.raises(ValueError, match="without a token"):
        AgentServer("0.0.0.0", 0, tmp_path / "s")
    cli = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                          "--store", str(tmp_path / "s")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 2 and "without a token" in cli.stderr


def test_tokens_are_required_and_checked(agent):
    server, url = agent
    for token in (None, "wrong-token", TOKEN[:-1]):
        with pytest.raises(AgentError) as err:
            AgentClient(url, token).health()
        assert err.value.status == 401
    req = urllib.request.Request(url + "/models", headers={"Authorization": "Basic " + TOKEN})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401 and err.value.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer" in json.loads(err.value.read())["error"]
    health = AgentClient(url, TOKEN).health()
    assert health["status"] == "ok" and health["models"] == [] and health["machine"]
    assert set(health["runtime"]) & {"ai-edge-litert", "tflite-runtime"}  # the interpreter it runs


def test_push_validates_stores_by_sha_and_skips_known_models(agent, tmp_path):
    server, url = agent
    client = AgentClient(url, TOKEN)
    tflite, manifest = fake_model(tmp_path, 1)
    model_id = client.push(tflite)
    assert model_id == hashlib.sha256(tflite.read_bytes()).hexdigest()
    stored = server.store.paths(model_id)[0]
    assert stored.read_bytes() == tflite.read_bytes()
    mtime = stored.stat().st_mtime_ns
    assert client.push(tflite) == model_id  # already held: no second upload
    assert stored.stat().st_mtime_ns == mtime
    assert [m["id"] for m in client.models()] == [model_id]
    assert client._json("GET", f"/models/{model_id}")["model"] == "fake1"


def _upload(url: str, manifest: bytes, body: bytes, token: str = TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/models", data=manifest + body, method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "X-Manifest-Length": str(len(manifest))})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_invalid_uploads_are_refused_and_leave_nothing(agent, tmp_path):
    server, url = agent
    tflite, mpath = fake_model(tmp_path, 2)
    body, manifest = tflite.read_bytes(), json.loads(mpath.read_text())
    cases = {
        "not a TFLite model": (json.dumps(manifest).encode(), b"\x00\x00\x00\x00ZIP!" + body[8:]),
        "does not match": (json.dumps({**manifest, "sha256": "0" * 64}).encode(), body),
        "not valid JSON": (b"{not json", body),
        "has schema": (json.dumps({**manifest, "schema": "other/9"}).encode(), body),
        "lacks": (json.dumps({k: v for k, v in manifest.items() if k != "outputs"}).encode(), body),
    }
    for expected, (m, b) in cases.items():
        status, reply = _upload(url, m, b)
        assert status == 400 and expected in reply["error"], (expected, reply)
    status, reply = raw_request(server.server_address[1],
                                f"POST /models HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                "Content-Length: 10\r\n\r\n0123456789".encode())
    assert status == 400 and "X-Manifest-Length" in reply["error"]
    assert stored_files(server.store.root) == [] and list(server.store.staging_dir.iterdir()) == []


def test_upload_size_limit_answers_413_before_reading(agent):
    server, url = agent
    status, reply = raw_request(server.server_address[1],
                                f"POST /models HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                f"X-Manifest-Length: 10\r\nContent-Length: {(1 << 20) + 1}\r\n\r\n".encode())
    assert status == 413 and "limit" in reply["error"]
    assert stored_files(server.store.root) == []


def test_malformed_requests_get_json_errors_and_server_survives(agent):
    server, url = agent
    port = server.server_address[1]
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health HTTP/9.9\r\n\r\n", 505),
        (f"POST /models HTTP/1.1\r\n{auth}Content-Length: banana\r\n\r\n".encode(), 400),
        (f"POST /jobs?model=xyz HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n".encode(), 400),
        (f"POST /jobs?model={'a' * 64}&kind=ascent HTTP/1.1\r\n{auth}Content-Length: 0\r\n\r\n".encode(),
         404),
        (f"GET /nowhere HTTP/1.1\r\n{auth}\r\n".encode(), 404),
        (f"DELETE /models HTTP/1.1\r\n{auth}\r\n".encode(), 405),
        (f"GET /jobs/123 HTTP/1.1\r\n{auth}\r\n".encode(), 404),
        (f"POST /models HTTP/1.1\r\n{auth}\r\n".encode(), 411),
    ]
    for data, want in cases:
        status, reply = raw_request(port, data)
        assert status == want and reply["status"] == want and reply["error"], (data, reply)
    assert AgentClient(url, TOKEN).health()["status"] == "ok"


def test_bad_plans_are_refused_and_failed_jobs_report_why(agent, tmp_path):
    server, url = agent
    client = AgentClient(url, TOKEN)
    model_id = client.push(fake_model(tmp_path, 3)[0])
    with pytest.raises(AgentError, match="invalid plan: not a probe plan") as err:
        client._json("POST", f"/jobs?model={model_id}&kind=ascent", b"\x00garbage")
    assert err.value.status == 400
    images = np.zeros((1, 16, 16, 3), np.float32)
    wrong_tap = ProbePlan(targets=[{"tap": "nope", "channel": 0}], images=images, subspace=DCT2)
    with pytest.raises(AgentError, match="is not a tap of this model"):
        client.submit(model_id, wrong_tap)
    full = ProbePlan(targets=[{"tap": "stem/conv", "channel": 1}], images=images)
    with pytest.raises(AgentError, match="finite differences cannot estimate the full input gradient"):
        client.submit(model_id, full)
    # A plan that fits: two jobs queue on the model, run in sandbox children and match a local run.
    plan = ProbePlan(targets=[{"tap": "stem/conv", "channel": 1}], images=images, subspace=DCT2, steps=2)
    jobs = [client.submit(model_id, plan) for _ in range(2)]
    local = run_plan(Runtime(TINY, TINY_MANIFEST), plan)
    for job_id in jobs:
        client.wait(job_id, timeout=60)
        result = client.result(job_id)
        np.testing.assert_array_equal(result.gradients, local.gradients)
    assert [j["status"] for j in client._json("GET", "/jobs")["jobs"]] == ["done", "done"]


def test_concurrent_clients(agent, tmp_path):
    server, url = agent
    models = [fake_model(tmp_path, 100 + i, size=20000 + i) for i in range(8)]

    def work(i: int) -> tuple[str, str, int]:
        client = AgentClient(url, TOKEN)
        model_id = client.push(models[i][0])
        health = client.health()
        return model_id, hashlib.sha256(models[i][0].read_bytes()).hexdigest(), len(health["models"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert all(got == want for got, want, _ in results)
    assert all(1 <= n <= 8 for _, _, n in results)
    ids = sorted(r[0] for r in results)
    assert [m["id"] for m in AgentClient(url, TOKEN).models()] == ids
    for model_id in ids:
        tflite, _ = server.store.paths(model_id)
        assert hashlib.sha256(tflite.read_bytes()).hexdigest() == model_id


def test_cut_off_upload_leaves_store_intact(agent, tmp_path):
    server, url = agent
    client = AgentClient(url, TOKEN)
    first = client.push(fake_model(tmp_path, 4)[0])
    tflite, mpath = fake_model(tmp_path, 5, size=200_000)
    manifest, body = mpath.read_bytes(), tflite.read_bytes()
    head = (f"POST /models HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"X-Manifest-Length: {len(manifest)}\r\n"
            f"Content-Length: {len(manifest) + len(body)}\r\n\r\n").encode()
    raw_request(server.server_address[1], head + manifest + body[:len(body) // 2], read=False)
    # The handler may not have started when the client is gone: let its upload appear (or come and go)
    # before waiting for it to be cleared, else an empty staging folder is seen too early.
    deadline = time.monotonic() + 2
    while not list(server.store.staging_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while list(server.store.staging_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(server.store.staging_dir.iterdir()) == []
    assert [m["id"] for m in client.models()] == [first]
    assert hashlib.sha256(server.store.paths(first)[0].read_bytes()).hexdigest() == first
    assert client.push(tflite) == hashlib.sha256(body).hexdigest()  # the same upload, whole, succeeds


def _start_agent(store: Path, token_file: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "serve", "--port", "0",
                             "--store", str(store), "--token-file", str(token_file)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, f"agent did not start: {line!r}"
    return proc, int(match.group(1))


def test_kill_9_mid_upload_leaves_no_partial_model(tmp_path):
    store, token_file = tmp_path / "store", tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)  # the agent refuses a token others may read
    proc, port = _start_agent(store, token_file)
    try:
        client = AgentClient(f"http://127.0.0.1:{port}", TOKEN)
        first = client.push(fake_model(tmp_path, 6)[0])
        tflite, mpath = fake_model(tmp_path, 7, size=600_000)
        manifest, body = mpath.read_bytes(), tflite.read_bytes()
        head = (f"POST /models HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"X-Manifest-Length: {len(manifest)}\r\nContent-Length: {len(manifest) + len(body)}\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head.encode() + manifest + body[:400_000])
            deadline = time.monotonic() + 10
            partial = []
            while not partial and time.monotonic() < deadline:  # wait until the agent is writing it
                partial = [p for p in (store / "staging").rglob("*.tflite") if p.stat().st_size > 0]
                time.sleep(0.02)
            assert partial, "the agent never started writing the upload"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert [p.parent.name for p in (store / "models").glob("*/model.tflite")] == [first]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    proc, port = _start_agent(store, token_file)
    try:
        client = AgentClient(f"http://127.0.0.1:{port}", TOKEN)
        assert [m["id"] for m in client.models()] == [first]
        assert list((store / "staging").iterdir()) == []
        assert hashlib.sha256((store / "models" / first / "model.tflite").read_bytes()).hexdigest() == first
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_job_queue_runs_in_order_keeps_records_over_a_restart_and_forgets_the_oldest(tmp_path):
    from device.jobs import JobQueue

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "stale.npz").write_bytes(b"from a previous run")
    order = []

    def execute(model_id: str, kind: str, plan_path: Path, result_path: Path, cancel) -> None:
        plan = plan_path.read_bytes()
        order.append(plan)
        if plan == b"bad":
            raise ValueError("plan says no, see /home/someone/secret/file.py")
        result_path.write_bytes(plan[::-1])

    jobs = JobQueue(tmp_path, execute, keep=3)
    assert list((tmp_path / "results").iterdir()) == []  # results no record names are removed
    submitted = [jobs.submit("m" * 64, "ascent", p) for p in (b"abc", b"bad", b"xyz")]
    deadline = time.monotonic() + 10
    while any(j.finished is None for j in submitted) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert order == [b"abc", b"bad", b"xyz"]
    assert [j.status for j in submitted] == ["done", "failed", "done"]
    assert submitted[1].error == "ValueError: plan says no, see file.py"  # no folders in job records
    assert jobs.result_path(submitted[2].id).read_bytes() == b"zyx"
    assert not list((tmp_path / "jobs").glob("*.plan.npz"))  # plans go once their job has run
    deadline = time.monotonic() + 10  # the queue's thread ends with its last job
    while any(t.name.startswith("jobs-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("jobs-") for t in threading.enumerate())

    again = JobQueue(tmp_path, execute, keep=3)  # a restart: finished records and results are served
    assert [again.get(j.id).status for j in submitted] == ["done", "failed", "done"]
    assert again.result_path(submitted[0].id).read_bytes() == b"cba"
    again.keep = 2
    again.submit("m" * 64, "ascent", b"new")
    with pytest.raises(KeyError, match="no job"):
        again.get(submitted[0].id)
    assert not again.result_path(submitted[0].id).exists() and again.get(submitted[2].id).status == "done"
    with pytest.raises(ValueError, match="kind must be one of"):
        again.submit("m" * 64, "train", b"")
