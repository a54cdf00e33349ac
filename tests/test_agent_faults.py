"""The agent keeps its promises under faults, on loopback: a full disk, a tampered store, a delete racing a
submit, the agent killed under its children, and the faults bench in its quick mode."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_agent_hardening import DCT2, SERVE, TARGET, images, request, start, upload, wait_for
from test_agent_server import ROOT, TOKEN, fake_model

from device import jobs as jobs_module
from device.jobs import JobQueue
from device.plan import ProbePlan
from device.private import UnsafeStore
from device.store import ModelStore
from toolkit.remote import AgentClient

BENCH = ROOT / "scripts" / "bench" / "agent_faults.py"
LONG_PLAN = ProbePlan(targets=TARGET, images=images(8), subspace=DCT2, steps=1000)
SHORT_PLAN = ProbePlan(targets=TARGET, images=images(), subspace=DCT2, steps=1)


def bench():
    """scripts/bench/agent_faults.py as a module (its process-tree walk serves the tests too)."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("agent_faults", BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH.parent))
    return module


@pytest.fixture()
def served(tmp_path):
    server, url = start(tmp_path)
    yield server, url, AgentClient(url, TOKEN)
    server.shutdown()
    server.server_close()


def token_file(folder: Path, mode: int = 0o600) -> Path:
    path = folder / "token"
    path.write_text(TOKEN)
    path.chmod(mode)
    return path


# --- a full disk -------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs: only root may mount one."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the disk-full path is also tested by "
                    "test_a_full_disk_fails_the_job_it_stops_and_the_queue_moves_on")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(mount: Path, leave: int) -> Path:
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * max(0, shutil.disk_usage(mount).free - leave))
        except OSError:
            pass
    return filler


def test_a_full_tmpfs_answers_507_fails_jobs_clearly_and_keeps_what_is_stored(tiny_disk, tmp_path):
    server = start(tiny_disk, min_free_bytes=0)[0]
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = AgentClient(url, TOKEN)
    try:
        model_id = client.push(fake_model(tmp_path, 1)[0])
        spare = client.push(fake_model(tmp_path, 10, size=200_000)[0])
        done = client.submit(model_id, SHORT_PLAN)
        client.wait(done)
        result = client._request("GET", f"/jobs/{done}/result")
        filler = fill(tiny_disk, 0)
        tflite, mpath = fake_model(tmp_path, 2)
        status, reply = upload(url, json.loads(mpath.read_text()), tflite.read_bytes())
        assert status == 507 and "DELETE /models" in reply["error"], reply
        status, reply, _ = request(url, "POST", f"/jobs?model={model_id}&kind=ascent", SHORT_PLAN.to_bytes())
        assert status == 507, reply
        # Room for a plan and its records but not for every result: whatever fails says why, nothing 5xx.
        failures = set()
        for leave in range(48 << 10, 0, -(8 << 10)):
            fill(tiny_disk, leave)
            status, reply, _ = request(url, "POST", f"/jobs?model={model_id}&kind=activations",
                                       SHORT_PLAN.to_bytes())
            assert status in (202, 507), reply
            if status == 202:
                wait_for(lambda job=reply["id"]: client.status(job)["status"] in ("done", "failed"))
                if client.status(reply["id"])["status"] == "failed":
                    failures.add(client.status(reply["id"])["error"])
        assert all("disk is full" in f for f in failures), failures
        fill(tiny_disk, 0)
        assert request(url, "DELETE", f"/models/{spare}")[0] == 200  # deleting frees a full disk
        assert shutil.disk_usage(tiny_disk).free >= 200_000
        filler.unlink()
        again = client.submit(model_id, SHORT_PLAN)  # the worker survived and the queue moves on
        assert client.wait(again, 30)["status"] == "done"
        assert client._request("GET", f"/jobs/{done}/result") == result
        assert hashlib.sha256(server.store.paths(model_id)[0].read_bytes()).hexdigest() == model_id
        assert client.health()["store_free_bytes"] > 0
    finally:
        server.shutdown()
        server.server_close()


def test_a_full_disk_fails_the_job_it_stops_and_the_queue_moves_on(tmp_path, monkeypatch):
    full = []

    def write_atomic(path, data, mode=None):
        if b'"status": "running"' in data and not full:  # the disk fills as the first job starts
            full.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data, mode)

    real_write = jobs_module.write_atomic
    monkeypatch.setattr(jobs_module, "write_atomic", write_atomic)
    ran = []

    def execute(model_id, kind, plan_path, result_path, cancel):
        ran.append(plan_path.read_bytes())
        result_path.write_bytes(b"result of " + plan_path.read_bytes())

    queue = JobQueue(tmp_path, execute)
    first, second = queue.submit("m" * 64, "ascent", b"one"), queue.submit("m" * 64, "ascent", b"two")
    wait_for(lambda: second.status in ("done", "failed"), 10)
    assert first.status == "failed" and "disk is full" in first.error and ran == [b"two"]
    assert second.status == "done" and queue.result_bytes(second.id) == b"result of two"
    full.clear()

    def record_fails(path, data, mode=None):  # the plan fits, its record does not
        if Path(path).name.endswith(".plan.npz"):
            return real_write(path, data, mode)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobs_module, "write_atomic", record_fails)
    with pytest.raises(OSError) as err:
        queue.submit("m" * 64, "ascent", b"three")
    assert err.value.errno == errno.ENOSPC and not list((tmp_path / "jobs").glob("*.plan.npz"))
    assert [j.id for j in queue.list()] == [first.id, second.id]  # refused: nothing of it stays behind


def test_the_free_space_floor_answers_507_before_reading_and_health_reports_it(served, tmp_path):
    server, url, client = served
    health = client.health()
    assert health["store_free_bytes"] > 0 and health["min_free_bytes"] == server.min_free_bytes
    model_id = client.push(fake_model(tmp_path, 3)[0])
    server.min_free_bytes = health["store_free_bytes"] + (1 << 40)  # more than this disk will ever have
    tflite, mpath = fake_model(tmp_path, 4)
    status, reply = upload(url, json.loads(mpath.read_text()), tflite.read_bytes())
    assert status == 507 and "--min-free-mib" in reply["error"]
    status, reply, _ = request(url, "POST", f"/jobs?model={model_id}&kind=ascent", SHORT_PLAN.to_bytes())
    assert status == 507 and client.health()["jobs"] == {}
    assert server.store.ids() == [model_id] and list(server.store.staging_dir.iterdir()) == []
    server.min_free_bytes = 0
    assert client.push(tflite) in server.store.ids()


# --- the store is the agent's alone ------------------------------------------------------------------


def test_records_and_results_are_private_whatever_the_umask(served, tmp_path):
    server, url, client = served
    previous = os.umask(0o002)
    try:
        model_id = client.push(fake_model(tmp_path, 5)[0])
        client.wait(client.submit(model_id, SHORT_PLAN))
    finally:
        os.umask(previous)
    root = server.store.root
    files = [p for p in root.rglob("*") if p.is_file()]
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    assert {p.parent.name for p in files} >= {"jobs", "results", model_id}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o700}


def spoiled_store(tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A store left by a real agent (one model, one finished job), then spoiled ``how``; and a folder
    outside it that the spoiling points into."""
    server, url = start(tmp_path / how)
    client = AgentClient(url, TOKEN)
    model_id = client.push(fake_model(tmp_path, 6)[0])
    client.wait(client.submit(model_id, SHORT_PLAN))
    server.shutdown()
    server.server_close()
    store, outside = tmp_path / how / "store", tmp_path / how / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("not the agent's")
    if how in ("jobs", "results", "staging"):
        shutil.rmtree(store / how)
        (store / how).symlink_to(outside)
    elif how == "manifest":
        (store / "models" / model_id / "manifest.json").unlink()
        (store / "models" / model_id / "manifest.json").symlink_to(outside / "precious.txt")
    elif how == "loose":
        (store / "results").chmod(0o777)
    elif how == "owner":
        os.chown(next((store / "jobs").glob("*.json")), 65534, 65534)
    return store, outside


@pytest.mark.parametrize("how", ["jobs", "results", "staging", "manifest", "loose", "owner"])
def test_a_tampered_store_is_refused_and_nothing_outside_is_touched(tmp_path, how):
    if how == "owner" and os.geteuid() != 0:
        pytest.skip("making a file of another user needs root")
    store, outside = spoiled_store(tmp_path, how)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    with pytest.raises(UnsafeStore, match="refusing the store"):
        ModelStore(store)
    cli = subprocess.run(SERVE + ["--store", str(store), "--token-file", str(token_file(tmp_path))],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert "refusing the store" in cli.stderr and "Traceback" not in cli.stderr
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before


def test_a_store_link_and_a_loose_token_file_are_refused(tmp_path):
    real = tmp_path / "real"
    ModelStore(real).close()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UnsafeStore, match="is a symbolic link"):
        ModelStore(tmp_path / "link")
    cli = subprocess.run(SERVE + ["--store", str(real), "--token-file", str(token_file(tmp_path, 0o644))],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 2 and "chmod 600" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_a_link_planted_while_serving_is_never_followed(served, tmp_path):
    server, url, client = served
    model_id = client.push(fake_model(tmp_path, 7)[0])
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"secret": "outside the store"}))
    manifest = server.store.models_dir / model_id / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(secret)
    status, reply, _ = request(url, "GET", f"/models/{model_id}")
    assert status == 404 and "outside the store" not in json.dumps(reply)
    assert request(url, "POST", f"/jobs?model={model_id}&kind=ascent", SHORT_PLAN.to_bytes())[0] == 404
    assert client.models() == []


# --- one lock for a model's life ------------------------------------------------------------------


def test_a_delete_racing_a_submit_never_accepts_a_job_on_a_deleted_model(tmp_path):
    race = bench().race(tmp_path, 30, seed=1)  # DELETE /models/ID and POST /jobs?model=ID at one instant
    assert race["rounds"] == 30 and sum(race["outcomes"].values()) == 30
    assert race["accepted_on_deleted"] == 0 and race["wrong_status"] == 0, race["outcomes"]
    assert set(race["outcomes"]) <= {"200+404", "409+202"}


# --- children die with the agent ------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks the process tree through /proc")
def test_children_die_with_a_killed_agent_and_its_job_leaves_no_result(tmp_path):
    store, token, faults = tmp_path / "store", token_file(tmp_path), bench()
    proc = subprocess.Popen(SERVE + ["--store", str(store), "--token-file", str(token)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+)", proc.stdout.readline()).group(1))
        client = AgentClient(f"http://127.0.0.1:{port}", TOKEN)
        job = client.submit(client.push(fake_model(tmp_path, 9)[0]), LONG_PLAN)
        record = store / "jobs" / f"{job}.json"
        wait_for(lambda: json.loads(record.read_text())["status"] == "running")
        time.sleep(0.3)  # the job's child is at work (the job takes seconds)
        below = faults.process_tree(proc.pid)
        assert len(below) >= 2  # the fork server and the job's child (and the resource tracker)
        os.kill(proc.pid, signal.SIGKILL)  # the agent alone, as the OOM killer does
        proc.wait()
        wait_for(lambda: not any(faults.alive(p) for p in below), 2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    time.sleep(0.5)
    assert not list((store / "results").iterdir())
    records = [json.loads(p.read_text()) for p in (store / "jobs").glob("*.json")]
    assert [r["status"] for r in records] == ["running"]  # failed by the next start, never done


def test_a_result_that_arrives_for_a_cancelled_job_is_discarded(tmp_path):
    started, finish = threading.Event(), threading.Event()

    def execute(model_id, kind, plan_path, result_path, cancel):
        started.set()
        finish.wait(10)  # a child that ignores the cancel and writes its result anyway
        result_path.write_bytes(b"late result")

    queue = JobQueue(tmp_path, execute)
    job = queue.submit("m" * 64, "ascent", b"plan")
    assert started.wait(10)
    queue.cancel(job.id)
    finish.set()
    wait_for(lambda: job.status == "cancelled", 10)
    assert list((tmp_path / "results").iterdir()) == []
    with pytest.raises(FileNotFoundError):
        queue.result_bytes(job.id)


# --- the bench ------------------------------------------------------------------------------------


def test_agent_faults_bench_quick_keeps_its_promises_and_its_keys():
    run = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert {"kill9", "disk_full", "tamper", "race"} <= set(result)
    kill9 = result["kill9"]
    assert set(kill9["stages"]) == {"upload", "running_job", "result_write", "agent_only"}
    for row in (kill9, *kill9["stages"].values()):
        assert {"trials", "torn", "lost", "stuck", "orphans_after_s"} <= set(row)
    assert (kill9["torn"], kill9["lost"], kill9["stuck"], kill9["orphans_after_s"]) == (0, 0, 0, 0)
    disk = result["disk_full"]
    if "skipped" not in disk:
        assert {"responses_5xx", "stuck_jobs", "stored_intact"} <= set(disk)
        assert (disk["responses_5xx"], disk["stuck_jobs"], disk["stored_intact"]) == (0, 0, True)
    tamper = result["tamper"]
    assert {"refused", "files_touched_outside"} <= set(tamper)
    assert tamper["refused"] == tamper["cases"] and tamper["files_touched_outside"] == 0
    race = result["race"]
    assert {"accepted_on_deleted", "wrong_status"} <= set(race)
    assert (race["accepted_on_deleted"], race["wrong_status"]) == (0, 0)
