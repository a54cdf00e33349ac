"""Fuzz a live board agent on loopback with mutated real models and hostile requests.

Exports a small real model (the tiny zoo model, float32 and int8 probe variants; or the models of
``--models DIR``), starts ``faceprobe-agent serve`` on 127.0.0.1 with a fresh store, and then, until
``--count`` mutants or ``--seconds`` have gone by:

- uploads mutants of the models (bit flips, byte sets, truncations, and edits of flatbuffer fields:
  tensor shapes, types and buffer indices, operator inputs and opcode indices, builtin codes, vector
  lengths), each with a manifest naming its sha256 so that it reaches the model check; an accepted
  mutant sometimes gets a small job, and is deleted again;
- sends hostile requests between them: malformed request lines and headers, lying lengths, wrong
  tokens, manifests and plans with wrong types, deep or huge JSON, zip bombs, plans over the limits,
  odd paths and ids, stalled sockets.

A thread polls ``/health`` throughout. Reported: ``models_tried``, ``requests`` (all requests sent,
uploads included), ``agent_crashes`` (the agent process died; it is restarted), ``agent_freezes``
(``/health`` slower than 1 s or unanswered), ``responses_5xx``, ``max_rss_mib`` (the agent's peak
resident memory; children excluded, they are the sandbox), and details. Loopback only.

    python scripts/bench/agent_fuzz.py [--json] [--count 5000] [--seconds 900] [--seed 0] [--models DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from device.flatbuffer import TFLiteStructure  # noqa: E402

TOKEN = "fuzz-token-0123456789abcdef"
INTERESTING = [0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 1 << 15, (1 << 16) - 1, 1 << 16, 100_000, 1 << 24,
               (1 << 31) - 1, -(1 << 31), 1 << 30]


# --- models --------------------------------------------------------------------------------------


def export_models(out: Path) -> list[tuple[bytes, dict]]:
    """The tiny zoo model at 32 px, exported (float32 and int8 probe models): (tflite bytes, manifest)."""
    import keras

    from toolkit.data.normalize import DEFAULT_NORMALIZATION
    from toolkit.export import export_keras
    from toolkit.zoo import get_model

    keras.utils.set_random_seed(0)
    model = get_model("tiny", input_size=32, embedding_dim=16)
    calibration = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    files = export_keras(model, {"normalization": DEFAULT_NORMALIZATION, "architecture": "tiny"}, out,
                         variants=("float32", "int8"), calibration=calibration)
    return [read_model(files[v]["probe"]) for v in ("float32", "int8")]


def read_model(tflite: Path) -> tuple[bytes, dict]:
    """A model's bytes and its manifest."""
    from device.manifest import load_manifest, manifest_path_for

    return tflite.read_bytes(), load_manifest(manifest_path_for(tflite))


def mutate(data: bytes, slots: list[tuple[int, int, str]], rng: random.Random) -> tuple[bytes, str]:
    """One mutant of ``data`` and the kind of mutation."""
    buf = bytearray(data)
    kind = rng.choice(["bit_flip", "byte_set", "truncate", "field", "field", "field"] if slots else
                      ["bit_flip", "byte_set", "truncate"])
    if kind == "bit_flip":
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            at = rng.randrange(len(buf))
            buf[at] ^= 1 << rng.randrange(8)
    elif kind == "byte_set":
        for _ in range(rng.choice([1, 1, 2, 8])):
            at = rng.randrange(len(buf))
            width = rng.choice([1, 1, 2, 4])
            value = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
            buf[at:at + width] = bytes([value]) * len(buf[at:at + width])
    elif kind == "truncate":
        buf = buf[:rng.randrange(8, len(buf))]
    else:
        at, width, what = rng.choice(slots)
        value = rng.choice(INTERESTING) if rng.random() < 0.8 else rng.randrange(-(1 << 31), 1 << 31)
        if width == 4:
            struct.pack_into("<i" if value < 0 else "<I", buf, at, value)
        else:
            buf[at] = value & 0xFF
        kind = "field:" + what
    return bytes(buf), kind


# --- the agent -----------------------------------------------------------------------------------


class Agent:
    """``faceprobe-agent serve`` in a child process; restarted when it dies."""

    def __init__(self, store: Path, token_file: Path, *extra: str):
        self.store, self.token_file, self.extra = store, token_file, extra  # extra: more `serve` options
        self.crashes, self.max_rss = 0, 0
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "device.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--store", str(self.store), "--token-file", str(self.token_file), "--job-timeout", "20",
             "--max-upload-mb", "16", *self.extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = self.proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not match:
            raise RuntimeError(f"the agent did not start: {line!r}")
        self.port = int(match.group(1))

    def check(self) -> bool:
        """True when the agent is alive; a dead one is counted and restarted."""
        with self._lock:
            self.sample()
            if self.proc.poll() is None:
                return True
            self.crashes += 1
            self.proc.stdout.close()
            self.start()
            return False

    def sample(self) -> None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            self.max_rss = max(self.max_rss, int(match.group(1)) * 1024)

    def stop(self) -> None:
        self.sample()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.responses_5xx = 0
        self.statuses: dict[str, int] = {}
        self.errors_5xx: list[str] = []
        self.mutations: dict[str, dict[str, int]] = {}
        self.models_tried = 0
        self.jobs: dict[str, int] = {}

    def count(self, what: str, status: int | str, detail: str = "") -> None:
        with self.lock:
            self.requests += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            if isinstance(status, int) and status >= 500 and status != 503:
                self.responses_5xx += 1
                if len(self.errors_5xx) < 20:
                    self.errors_5xx.append(f"{what}: {status} {detail[:200]}")


def call(agent: Agent, stats: Stats, what: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None, token: str | None = TOKEN, timeout: float = 90.0) -> tuple[int, bytes]:
    """One request; the status (0 when the connection failed) and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=timeout)
    all_headers = {"Authorization": f"Bearer {token}"} if token else {}
    all_headers.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        data = resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException) as exc:
        status, data = 0, str(exc).encode()
    finally:
        conn.close()
    stats.count(what, status, data.decode(errors="replace"))
    return status, data


def raw(agent: Agent, stats: Stats, what: str, data: bytes, hang_up: float | None = None) -> int:
    """Raw bytes on a socket; the status line's code (0 when none came back, or after ``hang_up`` s)."""
    try:
        with socket.create_connection(("127.0.0.1", agent.port), timeout=15) as s:
            s.sendall(data)
            if hang_up is not None:
                time.sleep(hang_up)
                stats.count(what, 0)
                return 0
            reply = b""
            while len(reply) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        reply = b""
    parts = reply.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    stats.count(what, status, reply[-300:].decode(errors="replace"))
    return status


class Health(threading.Thread):
    """Polls /health every 0.2 s; a poll slower than 1 s or unanswered is a freeze."""

    def __init__(self, agent: Agent):
        super().__init__(daemon=True)
        self.agent, self.freezes, self.polls, self.slowest = agent, 0, 0, 0.0
        self.times: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            if not self.agent.check():
                continue
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.agent.port, timeout=5)
                conn.request("GET", "/health", headers={"Authorization": f"Bearer {TOKEN}"})
                ok = conn.getresponse().status == 200
                conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
            took = time.perf_counter() - started
            self.polls += 1
            self.times.append(took)
            self.slowest = max(self.slowest, took)
            if not ok or took > 1.0:
                self.freezes += 1


# --- hostile requests ------------------------------------------------------------------------------


def junk_value(rng: random.Random):
    return rng.choice([None, "x", -1, 0, 10**30, 1e308, 2.5, [], {}, True, [[[[1]]]], "A" * 10_000,
                       {"a": {"b": {"c": [1, 2, {"d": None}]}}}])


def corrupt_json(obj, rng: random.Random):
    """A copy of a JSON document with one value somewhere replaced by junk."""
    doc = json.loads(json.dumps(obj))
    node = doc
    for _ in range(rng.randrange(1, 4)):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        if rng.random() < 0.5 or not isinstance(node[key], (dict, list)) or not node[key]:
            node[key] = junk_value(rng)
            return doc
        node = node[key]
    return doc


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def plan_body(plan_json: dict, images: np.ndarray) -> bytes:
    return npz(images=images, plan_json=np.frombuffer(json.dumps(plan_json).encode(), np.uint8))


def hostile(agent: Agent, stats: Stats, rng: random.Random, model_id: str, manifest: dict,
            model: bytes, plan_json: dict, shape: tuple[int, int, int]) -> None:
    """One hostile request, chosen at random."""
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    imgs = np.zeros((1, *shape), np.float32)
    jobs = f"/jobs?model={model_id}&kind={rng.choice(['ascent', 'activations'])}"
    choice = rng.randrange(16)
    if choice == 0:
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        raw(agent, stats, "garbage", noise + b"\r\n\r\n")
    elif choice == 1:
        raw(agent, stats, "long header", b"GET /health HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n")
    elif choice == 2:
        raw(agent, stats, "many headers", b"GET /health HTTP/1.1\r\n" + b"X: 1\r\n" * 200 + b"\r\n")
    elif choice == 3:
        length = rng.choice(["-1", "banana", "1e9", "9" * 5000, str(1 << 40), " 5", "0x10"])
        raw(agent, stats, "content-length", f"POST /models HTTP/1.1\r\n{auth}X-Manifest-Length: 3\r\n"
                                            f"Content-Length: {length}\r\n\r\nabc".encode())
    elif choice == 4:
        m = json.dumps(corrupt_json(manifest, rng)).encode()
        call(agent, stats, "manifest types", "POST", "/models", m + model, {"X-Manifest-Length": str(len(m))})
    elif choice == 5:
        m = rng.choice([b"[" * 50_000 + b"]" * 50_000, b'{"schema": 1e999}', b"NaN", b"\xff\xfe",
                        json.dumps({**manifest, "x": "y" * (3 << 20)}).encode()])
        call(agent, stats, "manifest json", "POST", "/models", m + model,
             {"X-Manifest-Length": str(rng.choice([len(m), len(m) + 5, 0, -3]))})
    elif choice == 6:
        call(agent, stats, "plan types", "POST", jobs, plan_body(corrupt_json(plan_json, rng), imgs))
    elif choice == 7:
        n = rng.choice([2000, 65, 100_000])
        body = (plan_body(plan_json, np.zeros((n, *shape), np.float32)) if n < 10_000
                else npz(images=np.zeros((n, 8, 8, 3), np.float32), plan_json=np.zeros(5, np.uint8)))
        call(agent, stats, "plan bomb", "POST", jobs, body)
    elif choice == 8:
        body = plan_body(plan_json, imgs)
        cut = bytearray(body)
        for _ in range(rng.randrange(1, 6)):
            cut[rng.randrange(len(cut))] = rng.randrange(256)
        call(agent, stats, "plan bytes", "POST", jobs, bytes(cut[:rng.randrange(1, len(cut) + 1)]))
    elif choice == 9:
        big = {**plan_json, **rng.choice([{"steps": 10**6}, {"subspace": {"kind": "dct", "size": 32}},
                                          {"targets": plan_json["targets"] * 100}, {"steps": 1e999}])}
        many = np.zeros((64, *shape), np.float32)
        call(agent, stats, "plan limits", "POST", jobs, plan_body(big, many if rng.random() < 0.3 else imgs))
    elif choice == 10:
        odd = rng.choice(["/jobs/../../etc/passwd", "/models/%2e%2e%2f", "/jobs/" + "a" * 5000,
                          "/models/" + "0" * 64,
                          "/jobs/x/result", "/health?" + "a=1&" * 2000, "//", "/models/" + model_id + "/x",
                          f"/jobs?model={model_id}&kind=%00", "/jobs?model=" + "f" * 64])
        call(agent, stats, "odd path", rng.choice(["GET", "DELETE", "POST", "PUT", "PATCH"]), odd, b"")
    elif choice == 11:
        token = rng.choice(["", "x", TOKEN[:-1], TOKEN + " "])
        call(agent, stats, "wrong token", "GET", "/health", token=token)
    elif choice == 12:
        raw(agent, stats, "stalled socket", f"POST /models HTTP/1.1\r\n{auth}X-Manifest-Length: 3\r\n"
                                            "Content-Length: 100000\r\n\r\nabc".encode(), hang_up=0.05)
    elif choice == 13:
        imgs_bad = rng.choice([np.full((1, *shape), np.nan, np.float32), np.zeros((1, *shape), np.float64),
                               np.zeros((1, shape[0], shape[1]), np.float32),
                               np.zeros((0, *shape), np.float32)])
        call(agent, stats, "plan images", "POST", jobs, plan_body(plan_json, imgs_bad))
    elif choice == 14:
        call(agent, stats, "plan members", "POST", jobs,
             npz(images=imgs, plan_json=np.frombuffer(json.dumps(plan_json).encode(), np.uint8),
                 extra=np.zeros(3)) if rng.random() < 0.5 else npz(images=imgs))
    else:
        call(agent, stats, "unknown job", rng.choice(["GET", "DELETE"]), f"/jobs/{os.urandom(16).hex()}")


# --- the run -------------------------------------------------------------------------------------


def try_mutant(agent: Agent, stats: Stats, rng: random.Random, model: bytes, manifest: dict,
               slots: list, plan: bytes) -> None:
    data, kind = mutate(model, slots, rng)
    m = json.dumps({**manifest, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}).encode()
    status, reply = call(agent, stats, "upload " + kind, "POST", "/models", m + data,
                         {"X-Manifest-Length": str(len(m))})
    with stats.lock:
        stats.models_tried += 1
        row = stats.mutations.setdefault(kind.split(".")[0] if kind.startswith("field") else kind,
                                         {"tried": 0, "accepted": 0})
        row["tried"] += 1
        row["accepted"] += status in (200, 201)
    if status not in (200, 201):
        return
    model_id = json.loads(reply)["id"]
    if rng.random() < 0.25:  # an accepted mutant runs a small job in its sandbox
        kind_ = rng.choice(["activations", "ascent"])
        status, reply = call(agent, stats, "mutant job", "POST", f"/jobs?model={model_id}&kind={kind_}", plan)
        if status == 202:
            job_id = json.loads(reply)["id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status, reply = call(agent, stats, "mutant job status", "GET", f"/jobs/{job_id}")
                job = json.loads(reply) if status == 200 else {"status": "unknown"}
                if job["status"] not in ("queued", "running"):
                    break
                time.sleep(0.05)
            else:
                call(agent, stats, "mutant job cancel", "DELETE", f"/jobs/{job_id}")
            with stats.lock:
                stats.jobs[job["status"]] = stats.jobs.get(job["status"], 0) + 1
    call(agent, stats, "delete", "DELETE", f"/models/{model_id}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=5000, help="mutant models to upload (default 5000)")
    p.add_argument("--seconds", type=float, default=900.0, help="stop after this long (default 900)")
    p.add_argument("--hostile-every", type=int, default=2,
                   help="one hostile request per N mutants (default 2)")
    p.add_argument("--clients", type=int, default=2, help="client threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", help="folder of exported probe models (*.probe.tflite + manifests) to mutate")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a dozen mutants for at most 30 seconds (seconds; the figures mean "
                        "nothing)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(count=12, seconds=30.0)
        args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="agent-fuzz-"))
    try:
        if args.models:
            models = [read_model(f) for f in sorted(Path(args.models).glob("*.probe.tflite"))]
            if not models:
                print(f"no *.probe.tflite in {args.models}", file=sys.stderr)
                return 2
        else:
            models = export_models(work / "models")
        token_file = work / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)  # the agent refuses a token others may read
        agent = Agent(work / "store", token_file)
        stats = Stats()
        health = Health(agent)
        health.start()
        # One intact model is held for the plan requests.
        model, manifest = models[0]
        m = json.dumps(manifest).encode()
        status, reply = call(agent, stats, "upload original", "POST", "/models", m + model,
                             {"X-Manifest-Length": str(len(m))})
        if status not in (200, 201):
            print(f"the original model was refused: {status} {reply[:300]!r}", file=sys.stderr)
            return 2
        model_id = json.loads(reply)["id"]
        shape = tuple(int(s) for s in manifest["input"]["shape"][1:])
        tap = next(o["tap"] for o in manifest["outputs"] if o["kind"] == "tap")
        plan_json = {"schema": "faceprobe.probe-plan/1", "targets": [{"tap": tap, "channel": 0}], "steps": 2,
                     "subspace": {"kind": "dct", "size": 2}, "image_shape": [1, *shape]}
        plan = plan_body(plan_json, np.zeros((1, *shape), np.float32))
        slots = []
        for data, _ in models:
            walk = TFLiteStructure(data)
            walk.check()
            slots.append(walk.slots)

        started = time.monotonic()
        counter = iter(range(args.count))
        counter_lock = threading.Lock()

        def client(index: int) -> None:
            rng = random.Random(args.seed * 1000 + index)
            while time.monotonic() - started < args.seconds:
                with counter_lock:
                    i = next(counter, None)
                if i is None:
                    return
                which = i % len(models)
                try_mutant(agent, stats, rng, models[which][0], models[which][1], slots[which], plan)
                if i % args.hostile_every == 0:
                    hostile(agent, stats, rng, model_id, manifest, model, plan_json, shape)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        health.stop_event.set()
        health.join()
        agent.check()
        agent.stop()
        times = health.times or [0.0]
        result = {
            "models_tried": stats.models_tried,
            "requests": stats.requests,
            "agent_crashes": agent.crashes,
            "agent_freezes": health.freezes,
            "responses_5xx": stats.responses_5xx,
            "max_rss_mib": round(agent.max_rss / (1 << 20), 1),
            "seconds": round(elapsed, 1),
            "health_polls": health.polls,
            "health_slowest_ms": round(health.slowest * 1000, 1),
            "health_median_ms": round(float(np.median(times)) * 1000, 1),
            "health_p99_ms": round(float(np.percentile(times, 99)) * 1000, 1),
            "health_over_100ms": int(sum(t > 0.1 for t in health.times)),
            "load_average": list(os.getloadavg()),
            "mutations": stats.mutations,
            "mutant_jobs": stats.jobs,
            "statuses": dict(sorted(stats.statuses.items())),
            "errors_5xx": stats.errors_5xx,
            "models": [{"variant": mf["variant"], "role": mf["role"], "bytes": len(data),
                        "field_slots": len(s)} for (data, mf), s in zip(models, slots, strict=True)],
            "seed": args.seed,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("models_tried", "requests", "agent_crashes", "agent_freezes", "responses_5xx",
                    "max_rss_mib", "seconds", "health_slowest_ms", "health_p99_ms"):
            print(f"{key:>20}  {result[key]}")
        for kind, row in sorted(result["mutations"].items()):
            print(f"{kind:>40}  tried {row['tried']:5d}  accepted {row['accepted']:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
