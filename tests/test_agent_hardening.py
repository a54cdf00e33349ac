"""The agent against hostile models, plans and connections, on loopback: sandboxed models and jobs,
bounds before work, 4xx for client errors, job control, one agent per store, connection limits."""

from __future__ import annotations

import hashlib
import io
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
from pathlib import Path

import numpy as np
import pytest
from test_agent_server import ROOT, TOKEN, fake_model, raw_request

from device import sandbox
from device.agent import AgentServer, ConnectionLimits
from device.flatbuffer import TFLiteStructure
from device.plan import ProbePlan
from device.tasks import JobLimits
from toolkit.remote import AgentClient, AgentError

DCT2 = {"kind": "dct", "size": 2}
SERVE = [sys.executable, "-m", "device.cli", "serve", "--port", "0"]
TARGET = [{"tap": "stem/conv", "channel": 1}]


def start(tmp_path: Path, **kwargs) -> tuple[AgentServer, str]:
    server = AgentServer("127.0.0.1", 0, tmp_path / "store", token=TOKEN, max_upload_bytes=1 << 20, **kwargs)
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture()
def agent(tmp_path):
    server, url = start(tmp_path, job_limits=JobLimits(job_timeout_s=20), queue_cap=2,
                        connections=ConnectionLimits(max_connections=6, header_timeout_s=1.0,
                                                     body_timeout_s=1.0))
    yield server, url, AgentClient(url, TOKEN)
    server.shutdown()
    server.server_close()


class HealthWatch:
    """Polls /health from a thread and keeps the slowest answer, to show the agent kept answering."""

    def __init__(self, url: str):
        self.url, self.slowest, self.failures = url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        client = AgentClient(self.url, TOKEN, timeout=5)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                client.health()
            except AgentError:
                self.failures += 1
            self.slowest = max(self.slowest, time.perf_counter() - started)
            time.sleep(0.02)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
            ) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def upload(url: str, manifest: dict, body: bytes) -> tuple[int, dict]:
    raw = json.dumps(manifest).encode()
    status, reply, _ = request(url, "POST", "/models", raw + body, {"X-Manifest-Length": str(len(raw))})
    return status, reply


def plan_bytes(plan_json: dict, images: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, plan_json=np.frombuffer(json.dumps(plan_json).encode(), np.uint8))
    return buf.getvalue()


def images(n: int = 1) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, (n, 16, 16, 3)).astype(np.float32)


# --- 1. sandboxed models and jobs ------------------------------------------------------------


def test_sandbox_reports_memory_time_and_crashes_in_the_child():
    with pytest.raises(sandbox.SandboxError) as err:
        sandbox.run(bytearray, (1 << 30,), 64 << 20, 30)
    assert err.value.kind == "memory" and "64 MiB" in err.value.message
    started = time.monotonic()
    with pytest.raises(sandbox.SandboxError) as err:
        sandbox.run(time.sleep, (30,), 64 << 20, 0.5)
    assert err.value.kind == "timeout" and time.monotonic() - started < 5
    with pytest.raises(sandbox.SandboxError) as err:
        sandbox.run(os.abort, (), 64 << 20, 30)
    assert err.value.kind == "crash" and "SIGABRT" in err.value.message
    assert sandbox.run(divmod, (7, 2), 64 << 20, 30) == (3, 1)


def test_a_model_that_asks_for_too_much_memory_is_refused_while_health_answers(agent, tmp_path):
    server, url, client = agent
    tflite, mpath = fake_model(tmp_path, 1)
    manifest = json.loads(mpath.read_text())
    # Inputs of 20000 x 20000 px: loading and running once would take ~5 GB; the sandbox allows 1 GiB.
    huge = {**manifest, "input": {**manifest["input"], "shape": [None, 20000, 20000, 3]}}
    with HealthWatch(url) as watch:
        status, reply = upload(url, huge, tflite.read_bytes())
        assert status == 400 and "does not run here" in reply["error"], reply
        assert "memory" in reply["error"] or "crashed" in reply["error"]
        # A flatbuffer that is not a model, and a model whose tensor shape was edited to ask for ~10 GB,
        # are refused by the structural check in the agent, before any child.
        junk = b"\x1c\x00\x00\x00TFL3" + np.random.default_rng(1).bytes(4000)
        walk = TFLiteStructure(tflite.read_bytes())
        walk.check()
        at = next(offset for offset, width, field in walk.slots if field == "tensor.shape")
        edited = bytearray(tflite.read_bytes())
        edited[at:at + 4] = (1 << 30).to_bytes(4, "little")
        for bad, expected in ((junk, "not a valid TFLite flatbuffer"), (bytes(edited), "alone would take")):
            status, reply = upload(url, {**manifest, "sha256": hashlib.sha256(bad).hexdigest()}, bad)
            assert status == 400 and expected in reply["error"], reply
    assert watch.failures == 0 and watch.slowest < 1.0, watch.slowest  # no freeze (latency: the fuzz bench)
    assert server.store.ids() == [] and list(server.store.staging_dir.iterdir()) == []
    assert client.push(tflite) in server.store.ids()  # the real model passes its check
    needs = server.store.needs(server.store.ids()[0])
    # Measured in the child: what the loaded model holds (may be 0 for a model this small, whose arena
    # fits the heap the fork server already has) and what one more image adds (at least its tensors).
    assert needs["memory_bytes"] >= 0 and needs["per_image_bytes"] >= 4 * 4 * 16 * 16 * 3


def test_a_job_over_its_time_limit_fails_clearly_and_the_queue_goes_on(tmp_path):
    server, url = start(tmp_path, job_limits=JobLimits(job_timeout_s=1.0))
    try:
        client = AgentClient(url, TOKEN)
        model_id = client.push(fake_model(tmp_path, 2)[0])
        slow = client.submit(model_id, ProbePlan(targets=TARGET, images=images(8), subspace=DCT2, steps=1000))
        with pytest.raises(AgentError, match="failed: took longer than its limit of 1 s"):
            client.wait(slow, timeout=30)
        quick = client.submit(model_id, ProbePlan(targets=TARGET, images=images(), subspace=DCT2, steps=1))
        assert client.wait(quick, timeout=30)["status"] == "done"
        assert client.result(quick).objective.shape == (1, 1, 2)
    finally:
        server.shutdown()
        server.server_close()


# --- 2. bounds before work ---------------------------------------------------------------------


def test_plans_over_the_limits_are_refused_before_their_images_are_decoded(agent, tmp_path):
    server, url, client = agent
    model_id = client.push(fake_model(tmp_path, 3)[0])
    base = ProbePlan(targets=TARGET, images=images(), subspace=DCT2).to_json()
    post = f"/jobs?model={model_id}&kind=ascent"
    cases = {
        "images": (base, np.zeros((65, 16, 16, 3), np.float32)),
        "steps": ({**base, "steps": 100_000}, images()),
        "subspace dimensions": ({**base, "subspace": {"kind": "dct", "size": 16}}, images()),
        "targets": ({**base, "targets": TARGET * 65}, images()),
        "needs about": ({**base, "targets": TARGET * 64, "subspace": {"kind": "window", "size": 10}},
                        np.zeros((64, 16, 16, 3), np.float32)),
    }
    for expected, (plan_json, imgs) in cases.items():
        status, reply, _ = request(url, "POST", post, plan_bytes(plan_json, imgs))
        assert status == 413 and expected in reply["error"], (expected, reply)
    # A zip bomb: zero images compress ~1000:1; the archive's headers say so before anything is inflated.
    bomb = plan_bytes(base, np.zeros((2000, 112, 112, 3), np.float32))
    assert len(bomb) < 1 << 20
    started = time.perf_counter()
    status, reply, _ = request(url, "POST", post, bomb)
    assert status == 413 and "decompresses to" in reply["error"] and time.perf_counter() - started < 1
    # A body over the plan limit is refused from its Content-Length alone.
    status, reply = raw_request(server.server_address[1],
                                f"POST {post} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                                f"Content-Length: {200 << 20}\r\n\r\n".encode())
    assert status == 413


# --- 3. client errors are 4xx with a message --------------------------------------------------


def test_malformed_plans_and_manifests_get_4xx_never_500(agent, tmp_path):
    server, url, client = agent
    tflite, mpath = fake_model(tmp_path, 4)
    model_id = client.push(tflite)
    base = ProbePlan(targets=TARGET, images=images(), subspace=DCT2).to_json()
    post = f"/jobs?model={model_id}&kind=ascent"
    deep = {**base, "objective": {"kind": "mean", "x": json.loads("[" * 200 + "]" * 200)}}
    bad_plans = {
        "channel": {**base, "targets": [{"tap": "stem/conv", "channel": "1"}]},
        "targets": {**base, "targets": {"tap": "stem/conv"}},
        "steps": {**base, "steps": 2.5},
        "step_size": {**base, "step_size": "big"},
        "valid_range": {**base, "valid_range": [0]},
        "seed": {**base, "finite_difference": {"seed": -1}},
        "nested deeper": deep,
        "subspace.size": {**base, "subspace": {"kind": "dct", "size": [2]}},
        "the plan": [1, 2, 3],
    }
    for expected, plan_json in bad_plans.items():
        status, reply, _ = request(url, "POST", post, plan_bytes(plan_json, images()))
        assert status == 400 and expected in reply["error"], (expected, reply)
    text = json.dumps(base)
    assert '"steps": 20' in text
    overflow = {**base, "steps": 1e300}
    status, reply, _ = request(url, "POST", post, plan_bytes(overflow, images()))
    assert status == 400 and "steps" in reply["error"]
    inf_json = np.frombuffer(text.replace('"steps": 20', '"steps": 1e999').encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images(), plan_json=inf_json)
    for body, expected in ((buf.getvalue(), "steps"), (b"PK\x03\x04garbage", "not a probe plan"),
                           (plan_bytes(base, images())[:-30], "not a probe plan"),
                           (plan_bytes(base, images().astype(np.float64)), "float32")):
        status, reply, _ = request(url, "POST", post, body)
        assert status == 400 and expected in reply["error"], (expected, reply)
    nan = images()
    nan[0, 0, 0, 0] = np.nan
    status, reply, _ = request(url, "POST", post, plan_bytes(base, nan))
    assert status == 400 and "NaN" in reply["error"]
    manifest = json.loads(mpath.read_text())
    bad_manifests = {
        "shape": {**manifest, "input": {**manifest["input"], "shape": "16x16"}},
        "channels": {**manifest, "outputs": [{**manifest["outputs"][1], "channels": "16"}]},
        "dtype": {**manifest, "input": {**manifest["input"], "dtype": 7}},
        "nested deeper": {**manifest, "extra": json.loads("[" * 100 + "]" * 100)},
        "int8": {**manifest, "outputs": [{**manifest["outputs"][0], "int8": {"scale": "x"}}]},
    }
    for expected, m in bad_manifests.items():
        status, reply = upload(url, m, tflite.read_bytes())
        assert status == 400 and expected in reply["error"], (expected, reply)
    for raw in (b"[" * 100_000, b'{"schema": 1e999}', b"NaN"):
        status, reply, _ = request(url, "POST", "/models", raw + tflite.read_bytes(),
                                   {"X-Manifest-Length": str(len(raw))})
        assert status == 400, (raw[:20], reply)
    assert AgentClient(url, TOKEN).health()["status"] == "ok"


def test_failed_job_records_hold_no_tracebacks_or_folders(agent, tmp_path):
    server, url, client = agent
    tflite, mpath = fake_model(tmp_path, 5)
    manifest = json.loads(mpath.read_text())
    # The manifest claims a larger first tap than the model has: the plan passes at submission and the
    # job fails in its child (the unit lies outside the real map), with the error reduced to one line.
    tap = {**manifest["outputs"][1], "shape": [None, 16, 16, 16]}
    manifest["outputs"][1] = tap
    status, reply = upload(url, manifest, tflite.read_bytes())
    assert status == 201, reply
    plan = ProbePlan(targets=TARGET, images=images(), subspace={"kind": "window", "size": 2}, steps=1,
                     objective={"kind": "unit", "position": [15, 15]})
    job_id = client.submit(reply["id"], plan)
    with pytest.raises(AgentError, match="failed: IndexError"):
        client.wait(job_id, timeout=30)
    record = client.status(job_id)
    texts = [json.dumps(record)] + [p.read_text() for p in (server.store.root / "jobs").glob("*.json")]
    for text in texts:
        assert "Traceback" not in text and "\\n" not in text and str(tmp_path) not in text
        assert not re.search(r"/(tmp|home|root|usr)/", text)


# --- 4. jobs: cancel, queue cap, restart, released threads -------------------------------------


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_cancel_queued_and_running_jobs_and_the_queue_cap(agent, tmp_path):
    server, url, client = agent
    model_id = client.push(fake_model(tmp_path, 6)[0])
    long_plan = ProbePlan(targets=TARGET, images=images(8), subspace=DCT2, steps=1000)
    running = client.submit(model_id, long_plan)
    wait_for(lambda: client.status(running)["status"] == "running")
    queued = [client.submit(model_id, long_plan) for _ in range(2)]  # the cap of this agent is 2
    status, reply, headers = request(url, "POST", f"/jobs?model={model_id}&kind=ascent", long_plan.to_bytes())
    assert status == 429 and "cap" in reply["error"] and int(headers["Retry-After"]) >= 1
    status, reply, _ = request(url, "DELETE", f"/jobs/{queued[0]}")
    assert status == 200 and reply["status"] == "cancelled"
    assert reply["error"] == "cancelled before it started"
    started = time.monotonic()
    status, reply, _ = request(url, "DELETE", f"/jobs/{running}")
    assert status == 200
    wait_for(lambda: client.status(running)["status"] == "cancelled", 5)
    assert time.monotonic() - started < 5  # the running child was stopped, not left to finish
    with pytest.raises(AgentError, match="cancelled"):
        client.wait(running)
    assert request(url, "DELETE", f"/jobs/{running}")[0] == 409  # finished already
    assert request(url, "DELETE", f"/jobs/{'0' * 32}")[0] == 404
    request(url, "DELETE", f"/jobs/{queued[1]}")
    wait_for(lambda: client.status(queued[1])["status"] == "cancelled")
    # No queue thread and no interpreter outlives the work: jobs ran in children, threads ended.
    wait_for(lambda: not any(t.name.startswith("jobs-") for t in threading.enumerate()), 10)


def serve(store: Path, token_file: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(SERVE + ["--store", str(store), "--token-file", str(token_file)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, f"agent did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc, int(match.group(1))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def test_one_agent_per_store_and_records_served_after_a_restart(tmp_path):
    store, token_file = tmp_path / "store", tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)  # the agent refuses a token others may read
    proc, port = serve(store, token_file)
    try:
        client = AgentClient(f"http://127.0.0.1:{port}", TOKEN)
        model_id = client.push(fake_model(tmp_path, 7)[0])
        job_id = client.submit(model_id, ProbePlan(targets=TARGET, images=images(), subspace=DCT2, steps=2))
        client.wait(job_id, timeout=60)
        before = client.result(job_id)
        second = subprocess.run(SERVE + ["--store", str(store), "--token-file", str(token_file)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another faceprobe-agent is serving the store" in second.stderr
        assert "Traceback" not in second.stderr
        assert client.status(job_id)["status"] == "done"  # the first agent lost nothing
        np.testing.assert_array_equal(client.result(job_id).objective, before.objective)
    finally:
        stop(proc)
    proc, port = serve(store, token_file)
    try:
        client = AgentClient(f"http://127.0.0.1:{port}", TOKEN)
        assert client.status(job_id)["status"] == "done"
        np.testing.assert_array_equal(client.result(job_id).gradients, before.gradients)
    finally:
        stop(proc)


# --- 5. store: delete, a model keeps its manifest ----------------------------------------------


def test_delete_a_model_and_a_manifest_stays_with_its_model(agent, tmp_path):
    server, url, client = agent
    tflite, mpath = fake_model(tmp_path, 8)
    model_id = client.push(tflite)
    manifest = json.loads(mpath.read_text())
    status, reply = upload(url, {**manifest, "model": "renamed"}, tflite.read_bytes())
    assert status == 409 and "another manifest" in reply["error"]
    assert upload(url, manifest, tflite.read_bytes()) == (200, {"id": model_id, "added": False})
    assert client._json("GET", f"/models/{model_id}")["model"] == manifest["model"]
    job = client.submit(model_id, ProbePlan(targets=TARGET, images=images(8), subspace=DCT2, steps=1000))
    status, reply, _ = request(url, "DELETE", f"/models/{model_id}")
    assert status == 409 and "jobs" in reply["error"]
    request(url, "DELETE", f"/jobs/{job}")
    wait_for(lambda: client.status(job)["status"] == "cancelled")
    status, reply, _ = request(url, "DELETE", f"/models/{model_id}")
    assert status == 200 and reply == {"id": model_id, "deleted": True}
    assert client.models() == [] and not (server.store.models_dir / model_id).exists()
    assert request(url, "DELETE", f"/models/{model_id}")[0] == 404
    assert upload(url, {**manifest, "model": "renamed"}, tflite.read_bytes())[0] == 201  # now it may change


# --- 6. connections: deadlines and a cap ---------------------------------------------------------


def test_slow_sockets_are_dropped_and_the_connection_cap_answers_503(agent):
    server, url, client = agent
    port = server.server_address[1]
    slow = []
    for _ in range(6):  # the cap of this agent
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"G")
        slow.append(s)
    wait_for(lambda: len(server.deadlines) == 6, 5)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status, reply = int(answer.split()[1]), json.loads(answer.partition(b"\r\n\r\n")[2])
    assert status == 503 and "at most 6 connections" in reply["error"]
    # One keeps trickling a header byte every 0.1 s: it is cut at its 1 s deadline all the same.
    started = time.monotonic()
    with pytest.raises(OSError):
        for _ in range(100):
            slow[0].sendall(b"E")
            time.sleep(0.1)
    assert time.monotonic() - started < 3
    for s in slow:
        s.close()
    wait_for(lambda: len(server.deadlines) == 0, 5)
    with HealthWatch(url) as watch:
        time.sleep(0.5)
    assert watch.failures == 0 and watch.slowest < 1.0
    # A body that stalls is dropped at its deadline too (1 s plus its size at 256 KiB/s here), and the
    # upload leaves nothing behind.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST /models HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nX-Manifest-Length: 10\r\n"
                  f"Content-Length: 1000\r\n\r\n0123".encode())
        started = time.monotonic()
        assert s.recv(1024) == b""  # closed by the agent, no answer owed
        assert 0.8 < time.monotonic() - started < 3
    assert client.health()["status"] == "ok" and list(server.store.staging_dir.iterdir()) == []
