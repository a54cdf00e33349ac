"""Does the board agent keep its promises under faults? kill -9, a full disk, a tampered store, a race.

Runs ``faceprobe-agent serve`` on 127.0.0.1 (a child process, fresh stores in a temporary folder) with
the tiny exported model kept in ``tests/data`` (made distinct per upload by random trailing bytes, which
the flatbuffer ignores), and reports:

- ``kill9``: trials of ``kill -9`` of the agent process alone (as the OOM killer does) at each stage:
  ``upload`` (mid-body or mid-check), ``running_job``, ``result_write`` (around the moment a job
  finishes) and ``agent_only`` (idle, its fork server warm). After each: ``torn`` (a held model whose
  bytes do not match its sha256, a record or result that does not parse, read before the restart),
  ``lost`` (a model or a done job's result acknowledged before the kill and missing or changed after
  the restart), ``stuck`` (a job still queued or running after the restart, or a new job that does not
  finish), ``orphans_after_s`` (processes of the killed agent still alive ``orphan_wait_s`` after it).
- ``disk_full``: the store on a 3 MiB tmpfs (needs root; skipped with the reason elsewhere), filled by a
  file beside it to leave 0 to 96 KiB, while models are uploaded and jobs run (``--min-free-mib 0``, so
  the disk itself says no). ``responses_5xx``: answers 500-599 other than 507 (the promised answer);
  ``stuck_jobs``: jobs not finished once space is back, or a new job that does not finish;
  ``stored_intact``: every model and result acknowledged before is still whole.
- ``tamper``: stores with a symlinked store, ``jobs/``, ``results/``, ``staging/``, model folder or
  manifest, a record of another owner (root only), loose modes, a loose token file; and a manifest
  link planted while the agent runs. ``refused``: cases refused (exit 2, one line; 404 for the planted
  link) of ``cases``; ``files_touched_outside``: files outside the store changed, removed or served.
- ``race``: rounds of ``DELETE /models/ID`` and ``POST /jobs?model=ID`` sent at the same instant.
  ``accepted_on_deleted``: the delete succeeded and the job was accepted too; ``wrong_status``: any
  answer other than (200, 404) or (409, 202).

    python scripts/bench/agent_faults.py [--json] [--quick] [--kills 100] [--rounds 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent_fuzz import Agent as FuzzAgent  # noqa: E402 - a sibling script, on the path as this one is

TOKEN = "faults-token-0123456789abcdef"
TINY = ROOT / "tests" / "data" / "tiny16.float32.probe.tflite"
TINY_MANIFEST = TINY.with_name("tiny16.float32.probe.manifest.json")
STAGES = ("upload", "running_job", "result_write", "agent_only")
ORPHAN_WAIT_S = 2.0
ACTIVE = ("queued", "running")


# --- models, plans and requests --------------------------------------------------------------------


def model(rng: random.Random, trailer: int = 4096) -> tuple[bytes, bytes]:
    """(manifest bytes, tflite bytes) of a distinct copy of the tiny model."""
    body = TINY.read_bytes() + rng.randbytes(trailer)
    manifest = {**json.loads(TINY_MANIFEST.read_text()), "sha256": hashlib.sha256(body).hexdigest(),
                "bytes": len(body)}
    return json.dumps(manifest).encode(), body


def plan(images: int = 1, steps: int = 1) -> bytes:
    """A plan body: ascent on the tiny model's first tap, a 2x2 DCT subspace."""
    imgs = np.random.default_rng(images).uniform(-0.5, 0.5, (images, 16, 16, 3)).astype(np.float32)
    doc = {"schema": "faceprobe.probe-plan/1", "targets": [{"tap": "stem/conv", "channel": 1}],
           "steps": steps, "subspace": {"kind": "dct", "size": 2}, "image_shape": [images, 16, 16, 3]}
    buf = io.BytesIO()
    np.savez_compressed(buf, images=imgs, plan_json=np.frombuffer(json.dumps(doc).encode(), np.uint8))
    return buf.getvalue()


class Agent(FuzzAgent):
    """``faceprobe-agent serve`` in a child process on a given store (started at once), with requests and
    a kill -9 that counts what outlives it."""

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 60.0) -> tuple[int, bytes]:
        """One request: (status, body); status 0 when the connection failed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body,
                         headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return 0, str(exc).encode()
        finally:
            conn.close()

    def upload(self, manifest: bytes, body: bytes) -> tuple[int, bytes]:
        return self.call("POST", "/models", manifest + body, {"X-Manifest-Length": str(len(manifest))})

    def submit(self, model_id: str, body: bytes, kind: str = "ascent") -> tuple[int, bytes]:
        return self.call("POST", f"/jobs?model={model_id}&kind={kind}", body)

    def jobs(self) -> list[dict]:
        status, body = self.call("GET", "/jobs")
        return json.loads(body)["jobs"] if status == 200 else []

    def job(self, job_id: str) -> dict:
        status, body = self.call("GET", f"/jobs/{job_id}")
        return json.loads(body) if status == 200 else {"status": f"http {status}"}

    def wait(self, job_id: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] not in ACTIVE or time.monotonic() > deadline:
                return job
            time.sleep(0.02)

    def descendants(self) -> list[int]:
        """Processes below the agent (fork server, resource tracker, sandbox children)."""
        return process_tree(self.proc.pid)

    def kill9(self) -> tuple[int, float]:
        """SIGKILL the agent alone; (its processes still alive after ORPHAN_WAIT_S, seconds until none)."""
        below = self.descendants()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        started = time.monotonic()
        while True:
            left = [p for p in below if alive(p)]
            took = time.monotonic() - started
            if not left or took > ORPHAN_WAIT_S:
                break
            time.sleep(0.01)
        for pid in left:  # leave nothing behind for the next trial
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return len(left), took


def process_tree(pid: int) -> list[int]:
    """The processes below ``pid``, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent has yet to reap it


def token_file(work: Path) -> Path:
    path = work / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


# --- kill -9 ------------------------------------------------------------------------------------------


def _torn(store: Path) -> int:
    """Held models whose bytes do not match their name, records and results that do not parse."""
    torn = 0
    for tflite in (store / "models").glob("*/model.tflite"):
        torn += hashlib.sha256(tflite.read_bytes()).hexdigest() != tflite.parent.name
    for record in (store / "jobs").glob("[!.]*.json"):
        try:
            json.loads(record.read_text())
        except ValueError:
            torn += 1
    for result in (store / "results").glob("[!.]*.npz"):
        try:
            with np.load(result) as z:
                [z[k] for k in z.files]
        except (OSError, ValueError):
            torn += 1
    return torn


def _stage_action(agent: Agent, stage: str, rng: random.Random, held: str, job_s: float) -> None:
    """Bring the agent to ``stage``; the caller kills it right after."""
    if stage == "upload":
        manifest, body = model(rng, trailer=rng.randrange(200_000, 800_000))
        thread = threading.Thread(target=agent.upload, args=(manifest, body), daemon=True)
        thread.start()
        time.sleep(rng.uniform(0.0, 0.4))  # mid-body, mid-check or just after
    elif stage == "running_job":
        status, reply = agent.submit(held, plan(images=8, steps=1000))
        job_id = json.loads(reply)["id"]
        deadline = time.monotonic() + 10
        while agent.job(job_id)["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
    elif stage == "result_write":
        agent.submit(held, plan(images=2, steps=3))
        time.sleep(job_s * rng.uniform(0.6, 1.3))  # around the moment the child writes its result
    # agent_only: the agent idle, its fork server and resource tracker up from the previous job


def kill9(work: Path, trials: int, seed: int) -> dict:
    rng = random.Random(seed)
    agent = Agent(work / "store", token_file(work))
    held_models: set[str] = set()
    results: dict[str, str] = {}  # done job -> sha256 of its result, as fetched before the kill
    rows = {s: {"trials": 0, "torn": 0, "lost": 0, "stuck": 0, "orphans_after_s": 0} for s in STAGES}
    slowest, below = 0.0, 0
    try:
        manifest, body = model(rng)
        status, reply = agent.upload(manifest, body)
        held = json.loads(reply)["id"]
        held_models.add(held)
        started = time.monotonic()
        status, reply = agent.submit(held, plan(images=2, steps=3))
        agent.wait(json.loads(reply)["id"])
        job_s = time.monotonic() - started
        for trial in range(trials):
            stage = STAGES[trial % len(STAGES)]
            row = rows[stage]
            row["trials"] += 1
            for job in agent.jobs():  # what the agent has acknowledged before this kill
                if job["status"] == "done" and job["id"] not in results:
                    got, data = agent.call("GET", f"/jobs/{job['id']}/result")
                    if got == 200:
                        results[job["id"]] = hashlib.sha256(data).hexdigest()
            _stage_action(agent, stage, rng, held, job_s)
            below += len(agent.descendants())
            orphans, took = agent.kill9()
            row["orphans_after_s"] += orphans
            slowest = max(slowest, took)
            row["torn"] += _torn(agent.store)
            agent.start()
            status, reply = agent.call("GET", "/models")
            now_held = {m["id"] for m in json.loads(reply)["models"]} if status == 200 else set()
            row["lost"] += len(held_models - now_held)
            held_models |= now_held
            for job_id, digest in results.items():
                got, data = agent.call("GET", f"/jobs/{job_id}/result")
                row["lost"] += got != 200 or hashlib.sha256(data).hexdigest() != digest
            row["stuck"] += sum(j["status"] in ACTIVE for j in agent.jobs())
            status, reply = agent.submit(held, plan(images=1, steps=1))
            row["stuck"] += status != 202 or agent.wait(json.loads(reply)["id"], 30)["status"] != "done"
    finally:
        agent.stop()
    keys = ("trials", "torn", "lost", "stuck", "orphans_after_s")
    total = {k: sum(r[k] for r in rows.values()) for k in keys}
    return {**total, "stages": rows, "orphan_wait_s": ORPHAN_WAIT_S, "slowest_exit_s": round(slowest, 3),
            "processes_below_agent": below}


# --- a full disk -----------------------------------------------------------------------------------


def disk_full(work: Path, seed: int, quick: bool) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "needs root to mount a small tmpfs (run the bench as root)"}
    mount = work / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs here: {made.stderr.strip()[:200]}"}
    rng = random.Random(seed)
    agent: Agent | None = None
    statuses: dict[str, int] = {}
    responses_5xx, stuck, intact = 0, 0, True

    def count(status: int) -> int:
        nonlocal responses_5xx
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        responses_5xx += 500 <= status < 600 and status != 507
        return status

    try:
        agent = Agent(mount / "store", token_file(work), "--min-free-mib", "0")
        manifest, body = model(rng)
        held = json.loads(agent.upload(manifest, body)[1])["id"]
        status, reply = agent.submit(held, plan())
        first = json.loads(reply)["id"]
        agent.wait(first)
        first_result = hashlib.sha256(agent.call("GET", f"/jobs/{first}/result")[1]).hexdigest()
        filler = mount / "filler"
        jobs: list[str] = []
        for left in range(96 << 10, -1, -(16 << 10) if quick else -(2 << 10)):
            filler.unlink(missing_ok=True)
            free = shutil.disk_usage(mount).free
            with open(filler, "wb") as fh:  # all but ``left`` bytes; tmpfs counts whole pages
                try:
                    fh.write(b"\0" * max(0, free - left))
                except OSError:
                    pass
            manifest, body = model(rng)
            status, reply = agent.upload(manifest, body)
            if count(status) in (200, 201):
                count(agent.call("DELETE", f"/models/{json.loads(reply)['id']}")[0])
            for kind in ("ascent", "activations"):
                status, reply = agent.submit(held, plan(images=2, steps=2), kind)
                if count(status) == 202:
                    jobs.append(json.loads(reply)["id"])
            count(agent.call("GET", "/health")[0])
            for job_id in jobs[-2:]:
                agent.wait(job_id, 30)
        filler.unlink(missing_ok=True)
        stuck = sum(agent.wait(j, 30)["status"] in ACTIVE for j in jobs)
        status, reply = agent.submit(held, plan())
        stuck += count(status) != 202 or agent.wait(json.loads(reply)["id"], 30)["status"] != "done"
        failed = [agent.job(j) for j in jobs if agent.job(j)["status"] == "failed"]
        got, data = agent.call("GET", f"/jobs/{first}/result")
        tflite = mount / "store" / "models" / held / "model.tflite"
        intact = (got == 200 and hashlib.sha256(data).hexdigest() == first_result
                  and hashlib.sha256(tflite.read_bytes()).hexdigest() == held)
        survived = agent.proc.poll() is None
    finally:
        if agent is not None:
            agent.stop()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return {"responses_5xx": responses_5xx, "stuck_jobs": stuck, "stored_intact": intact,
            "agent_alive": survived, "jobs": len(jobs), "jobs_failed": len(failed),
            "failure_reasons": sorted({j["error"] for j in failed})[:5], "statuses": statuses}


# --- a tampered store -----------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _valid_store(work: Path, name: str, rng: random.Random) -> tuple[Path, str]:
    """A store made and left by a real agent: one model, one finished job."""
    agent = Agent(work / name, token_file(work))
    try:
        manifest, body = model(rng)
        held = json.loads(agent.upload(manifest, body)[1])["id"]
        agent.wait(json.loads(agent.submit(held, plan())[1])["id"])
    finally:
        agent.stop()
    return work / name, held


def _tamper_cases(store: Path, held: str, outside: Path) -> dict:
    """Each case: a function that spoils a copy of ``store`` (or the token file)."""
    def link_folder(name: str):
        def spoil(s: Path) -> None:
            target = outside / f"{name}-{s.name}"
            shutil.copytree(s / name, target)
            shutil.rmtree(s / name)
            (s / name).symlink_to(target)
        return spoil

    def manifest_link(s: Path) -> None:
        (s / "models" / held / "manifest.json").unlink()
        (s / "models" / held / "manifest.json").symlink_to(outside / "secret.json")

    def model_link(s: Path) -> None:
        target = outside / f"model-{s.name}"
        shutil.move(s / "models" / held, target)
        (s / "models" / held).symlink_to(target)

    def store_link(s: Path) -> None:
        target = outside / f"store-{s.name}"
        shutil.move(s, target)
        s.symlink_to(target)

    cases = {"store_link": store_link, "jobs_link": link_folder("jobs"),
             "results_link": link_folder("results"), "staging_link": link_folder("staging"),
             "model_folder_link": model_link, "manifest_link": manifest_link,
             "group_writable_folder": lambda s: (s / "jobs").chmod(0o770),
             "world_writable_record": lambda s: next((s / "jobs").glob("*.json")).chmod(0o666),
             "loose_token_file": None}
    if os.geteuid() == 0:
        cases["foreign_owner"] = lambda s: os.chown(next((s / "jobs").glob("*.json")), 65534, 65534)
    return cases


def tamper(work: Path, seed: int) -> dict:
    rng = random.Random(seed)
    outside = work / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"secret": "not the agent's", "pad": "x" * 100}))
    (outside / "keep.txt").write_text("a file the agent must never touch\n")
    base, held = _valid_store(work, "base", rng)
    cases = _tamper_cases(base, held, outside)
    before = _snapshot(outside)
    rows, refused = {}, 0
    for i, (name, spoil) in enumerate(cases.items()):
        store = work / f"case{i}"
        shutil.copytree(base, store)
        token = token_file(work)
        if spoil is None:
            token.chmod(0o644)
        else:
            spoil(store)
        before = {**before, **{k: v for k, v in _snapshot(outside).items() if k not in before}}
        run = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--port", "0", "--store",
                              str(store), "--token-file", str(token)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        ok = run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
        refused += ok
        rows[name] = {"refused": ok, "exit": run.returncode, "message": run.stderr.strip()[-300:]}
    token_file(work)
    # A link planted while the agent runs: the manifest it points to must never be served.
    store, held = _valid_store(work, "live", rng)
    agent = Agent(store, work / "token")
    try:
        (store / "models" / held / "manifest.json").unlink()
        (store / "models" / held / "manifest.json").symlink_to(outside / "secret.json")
        status, body = agent.call("GET", f"/models/{held}")
        job_status, _ = agent.submit(held, plan())
    finally:
        agent.stop()
    served = int(b"not the agent's" in body)
    live_ok = status == 404 and job_status == 404 and not served
    refused += live_ok
    rows["manifest_link_planted_live"] = {"refused": live_ok, "get_model": status, "post_job": job_status}
    after = _snapshot(outside)
    touched = sum(after.get(k) != v for k, v in before.items()) + served
    return {"cases": len(rows), "refused": refused, "files_touched_outside": touched, "by_case": rows}


# --- a race --------------------------------------------------------------------------------------


def race(work: Path, rounds: int, seed: int) -> dict:
    rng = random.Random(seed)
    agent = Agent(work / "store", token_file(work))
    outcomes: dict[str, int] = {}
    accepted_on_deleted = wrong = 0
    body = plan()
    try:
        manifest, model_bytes = model(rng)
        for _ in range(rounds):
            status, reply = agent.upload(manifest, model_bytes)
            model_id = json.loads(reply)["id"]
            gate = threading.Barrier(2)
            answers: dict[str, tuple[int, bytes]] = {}

            def send(what: str, model_id: str = model_id, gate: threading.Barrier = gate,
                     answers: dict = answers) -> None:
                gate.wait()
                answers[what] = (agent.call("DELETE", f"/models/{model_id}") if what == "delete"
                                 else agent.submit(model_id, body, "activations"))

            threads = [threading.Thread(target=send, args=(w,)) for w in ("delete", "submit")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            pair = (answers["delete"][0], answers["submit"][0])
            outcomes[f"{pair[0]}+{pair[1]}"] = outcomes.get(f"{pair[0]}+{pair[1]}", 0) + 1
            accepted_on_deleted += pair == (200, 202)
            wrong += pair not in ((200, 404), (409, 202))
            if pair[1] == 202:
                agent.wait(json.loads(answers["submit"][1])["id"], 30)
            if pair[0] != 200:
                agent.call("DELETE", f"/models/{model_id}")
    finally:
        agent.stop()
    return {"rounds": rounds, "accepted_on_deleted": accepted_on_deleted, "wrong_status": wrong,
            "outcomes": outcomes}


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=100, help="kill -9 trials over the stages (default 100)")
    p.add_argument("--rounds", type=int, default=200, help="delete-vs-submit rounds (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one kill per stage, 10 rounds, a coarse disk sweep")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    kills, rounds = (len(STAGES), 10) if args.quick else (args.kills, args.rounds)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="agent-faults-"))
    try:
        for part in ("kill9", "disk", "tamper", "race"):
            (work / part).mkdir()
        result = {"kill9": kill9(work / "kill9", kills, args.seed),
                  "disk_full": disk_full(work / "disk", args.seed, args.quick),
                  "tamper": tamper(work / "tamper", args.seed),
                  "race": race(work / "race", rounds, args.seed)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update({"quick": args.quick, "seed": args.seed, "seconds": round(time.monotonic() - started, 1)})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    k, d, t, r = result["kill9"], result["disk_full"], result["tamper"], result["race"]
    print(f"{'kill9':>10}  {k['trials']} trials: torn {k['torn']}, lost {k['lost']}, stuck {k['stuck']}, "
          f"orphans after {k['orphan_wait_s']} s {k['orphans_after_s']} of {k['processes_below_agent']} "
          f"(slowest exit {k['slowest_exit_s']} s)")
    print(f"{'disk_full':>10}  " + (d["skipped"] if "skipped" in d else
                                    f"5xx {d['responses_5xx']}, stuck jobs {d['stuck_jobs']}, "
                                    f"stored intact {d['stored_intact']}"))
    print(f"{'tamper':>10}  refused {t['refused']} of {t['cases']}, files touched outside "
          f"{t['files_touched_outside']}")
    print(f"{'race':>10}  {r['rounds']} rounds: accepted on deleted {r['accepted_on_deleted']}, "
          f"wrong status {r['wrong_status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
