"""`faceprobe-agent serve`: the board's HTTP agent (standard library only, plus numpy + LiteRT for jobs).

Endpoints (JSON unless stated; every endpoint, /health included, needs ``Authorization: Bearer
<token>`` when the agent has a token, because /health names the models held and the machine):

- ``GET  /health``                runtime, version, machine, models held, jobs by status, the store's free
  space, the TLS certificate's SHA-256 fingerprint (None over plain HTTP)
- ``GET  /models``                models held (id = sha256 of the .tflite, model, variant, bytes)
- ``GET  /models/<id>``           a held model's manifest
- ``POST /models``                upload: header ``X-Manifest-Length: N``; body = the manifest JSON (N
  bytes) followed by the .tflite bytes. Validated (TFLite identifier, manifest schema, sha256), then
  loaded and run once in a sandbox child (``device.sandbox``) before it is stored. 201 when added,
  200 when already held with this manifest, 409 when held with another.
- ``DELETE /models/<id>``         remove a held model (409 while it has queued or running jobs)
- ``POST /jobs?model=<id>&kind=ascent|activations|embeddings|bench``   body = ``ProbePlan.to_bytes()``; 202 +
  job id (``embeddings`` reads only the plan's images: the deploy model's embeddings; ``bench`` times the
  model and the held models its plan names, interleaved: ``device.bench.BenchPlan.to_bytes()``).
  413 when the plan is over the agent's limits, 429 + ``Retry-After`` when the model's queue is full.
- ``GET  /jobs``, ``GET /jobs/<id>``                   job status (queued, running, done, failed, cancelled)
- ``DELETE /jobs/<id>``           cancel a queued or running job (409 when it has finished)
- ``GET  /jobs/<id>/result``      the result as .npz bytes (409 while queued/running or when failed)

Errors are JSON ``{"error": message, "status": code}``; a client's mistake is a 4xx. The agent refuses
to listen on anything but loopback without a token, or without TLS unless told ``insecure``; refuses
request bodies over the upload limit with 413, answers 503 past ``max_connections`` open connections,
and drops a connection whose request is not done by its deadline (headers within ``header_timeout_s``;
a body at ``min_rate`` bytes/s or better). A full disk is the client's to hear about: 507, and uploads
and jobs are refused with 507 before the store's free space falls below ``min_free_bytes``. A model is
held, deleted and given jobs under one lock: a job on a deleted model is 404, deleting a model with
queued or running jobs 409. Query strings never reach the log.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import platform
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import __version__
from .archive import PlanArchive, PlanLimits, PlanTooLarge
from .files import disk_full
from .jobs import KINDS, JobQueue, QueueFull
from .store import ModelStore, StoreConflict, StoreError, is_model_id
from .tasks import JobLimits, Task
from .tls import TLSFiles

CHUNK = 1 << 16
DEFAULT_MAX_UPLOAD_MB = 256
MAX_MANIFEST_BYTES = 4 << 20
_QUERY = re.compile(r"\?[^\s\"']*")


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections the agent serves at once and how long one request may take."""

    max_connections: int = 32
    header_timeout_s: float = 10.0  # request line and headers, and the wait for a kept-alive request
    body_timeout_s: float = 30.0  # a body (or a response) gets this plus its size at min_rate
    min_rate: int = 256 << 10  # bytes per second


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def runtime_versions() -> dict[str, str]:
    """Installed interpreter packages and their versions (what jobs on this board will run on)."""
    from importlib import metadata

    found = {}
    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


class _Deadlines:
    """Connections and the time by which each must be done; one thread shuts down those past it."""

    def __init__(self):
        self._due: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="agent-deadlines").start()

    def set(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._due[sock] = time.monotonic() + seconds

    def drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._due)

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [s for s, due in self._due.items() if due < now]
                for sock in late:
                    del self._due[sock]
            for sock in late:  # the handler's blocked read or write returns at once
                try:  # the plain socket's shutdown, also under TLS (whose own would drop its state)
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()


class AgentServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the store, the job queue, the auth settings and the limits."""

    daemon_threads = True

    def __init__(self, host: str, port: int, store_dir: str | os.PathLike, token: str | None = None,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20, threads: int | None = None,
                 kernels: str = "xnnpack", job_limits: JobLimits | None = None,
                 plan_limits: PlanLimits | None = None, connections: ConnectionLimits | None = None,
                 queue_cap: int = 16, parallel_jobs: int = 1, tls: TLSFiles | None = None,
                 insecure: bool = False, min_free_bytes: int | None = None,
                 benchmark_model: str | None = None):
        if not token and not is_loopback(host):
            raise ValueError(f"refusing to listen on {host!r} without a token: anyone on the network could "
                             "upload models and run jobs. Pass --token-file FILE (or --token T), or listen "
                             "on 127.0.0.1")
        if tls is None and not insecure and not is_loopback(host):
            raise ValueError(f"refusing to listen on {host!r} without TLS: the token would cross the network "
                             "in clear text. Pass --tls-self-signed (or --tls-cert FILE --tls-key FILE), or "
                             "--insecure on a network you trust")
        if token is not None and not token.strip():
            raise ValueError("the token is empty; write a long random string to the token file")
        self.token = token.strip().encode() if token else None
        self.max_upload_bytes = int(max_upload_bytes)
        self.plan_limits = plan_limits or PlanLimits()
        self.limits = connections or ConnectionLimits()
        job_limits = job_limits or JobLimits()
        # A job's arrays, its result among them, fit half its memory allowance (tasks._limits_share).
        self.min_free_bytes = (job_limits.job_memory_bytes // 2 if min_free_bytes is None
                               else int(min_free_bytes))
        self.models_lock = threading.Lock()  # a model is held, deleted and given jobs under this lock
        self.store = ModelStore(store_dir)
        try:
            self.tls = tls.load(store_dir) if tls is not None else None
            self.task = Task(self.store, threads=threads, kernels=kernels, limits=job_limits,
                             plan_limits=self.plan_limits, benchmark_model=benchmark_model)
            self.jobs = JobQueue(Path(store_dir), self.task.execute, queue_cap=queue_cap,
                                 parallel=parallel_jobs)
            if ":" in host:
                self.address_family = socket.AF_INET6
            super().__init__((host, port), AgentHandler)
        except BaseException:
            self.store.close()
            raise
        self.deadlines = _Deadlines()

    def health(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for job in self.jobs.list():
            counts[job.status] = counts.get(job.status, 0) + 1
        return {"status": "ok", "agent": "faceprobe-agent", "version": __version__,
                "runtime": runtime_versions(), "kernels": self.task.kernels, "threads": self.task.threads,
                "machine": platform.machine(), "system": platform.system(),
                "python": platform.python_version(), "models": self.store.ids(), "jobs": counts,
                "connections": len(self.deadlines), "store_free_bytes": self.free_bytes(),
                "min_free_bytes": self.min_free_bytes,
                "tls_fingerprint": self.tls.fingerprint if self.tls else None}

    def free_bytes(self) -> int:
        """Bytes free on the store's file system."""
        return shutil.disk_usage(self.store.root).free

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection; under TLS its handshake happens in its own thread, within its deadline."""
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        """A connection that failed outside a request (a TLS handshake, a reset): one line, no traceback."""
        if not getattr(self, "quiet", False):
            exc = sys.exc_info()[1]
            sys.stderr.write(_QUERY.sub("?…", f"{client_address[0]} - connection dropped: {exc!r}") + "\n")

    def process_request(self, request, client_address) -> None:
        """Refuse a connection past the cap at once (503) instead of giving it a thread."""
        if len(self.deadlines) >= self.limits.max_connections:
            cap = self.limits.max_connections
            body = json.dumps({"error": f"this agent serves at most {cap} connections at once; retry shortly",
                               "status": 503}).encode() + b"\n"
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\n"
                                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.deadlines.set(request, self.limits.header_timeout_s)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.deadlines.drop(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.close()
        self.store.close()


class AgentHandler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"faceprobe-agent/{__version__}"
    timeout = 30  # seconds one read may stall; the request as a whole has its deadline (_Deadlines)

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()  # bounded by the header deadline process_request set

    def handle_one_request(self) -> None:
        self.server.deadlines.set(self.connection, self.server.limits.header_timeout_s)
        super().handle_one_request()

    def _extend_deadline(self, nbytes: int) -> None:
        limits = self.server.limits
        self.server.deadlines.set(self.connection, limits.body_timeout_s + nbytes / limits.min_rate)

    # --- responses -------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self._extend_deadline(len(body))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self._send(status, (json.dumps(obj) + "\n").encode(), "application/json", headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None,
                   headers: dict | None = None) -> None:
        """JSON errors everywhere, including those http.server raises for malformed request lines."""
        self.close_connection = True
        # A request line too broken to name its version defaults to HTTP/0.9, which has no status line.
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        if code == 501:  # http.server's answer to a method it has no handler for: the client's mistake
            code, message = 405, f"method {getattr(self, 'command', '')[:20]!r} is not allowed"
        try:
            msg = message or HTTPStatus(code).phrase
        except ValueError:
            msg = message or "error"
        headers = {**({"WWW-Authenticate": "Bearer"} if code == 401 else {}), **(headers or {})}
        try:
            self._json(code, {"error": msg, "status": code}, headers)
        except OSError:  # the client is gone or was cut off at its deadline
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature fixed by http.server
        """One line per request or error, with every query string cut: a client may put a secret in one."""
        if not getattr(self.server, "quiet", False):
            sys.stderr.write(_QUERY.sub("?…", f"{self.address_string()} - {format % args}") + "\n")

    # --- dispatch --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        try:
            self._authorise()
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._route(method, parts, query)
        except ApiError as exc:
            self.send_error(exc.status, exc.message, headers=exc.headers)
        except (ConnectionError, TimeoutError) as exc:
            # The client went away mid-request; nothing to answer, the store is untouched.
            self.close_connection = True
            self.log_message("connection lost: %s", exc)
        except OSError as exc:
            if disk_full(exc):  # nothing stored was touched: the write that failed was a new file's
                self.send_error(507, self._disk_full_message())
            else:
                self._internal_error(exc)
        except Exception as exc:  # the server must survive any request
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        self.log_message("internal error: %r", exc)
        self.send_error(500, f"internal error: {type(exc).__name__}: {exc}")

    def _disk_full_message(self) -> str:
        free = self.server.free_bytes() / (1 << 20)
        return (f"the board's store is short of space ({free:.1f} MiB free, this agent keeps "
                f"{self.server.min_free_bytes / (1 << 20):.1f} MiB free: --min-free-mib): delete models "
                "(DELETE /models/<id>) or free space on its disk, then retry")

    def _require_space(self, incoming: int) -> None:
        """507 before reading a body that would leave the store below its free-space floor."""
        if self.server.free_bytes() - incoming < self.server.min_free_bytes:
            raise ApiError(507, self._disk_full_message())

    def _authorise(self) -> None:
        token = self.server.token
        if token is None:
            return
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), token):
            raise ApiError(401, "wrong token")

    def _route(self, method: str, parts: list[str], query: dict[str, str]) -> None:
        routes = {
            ("GET", "health"): lambda: self._json(200, self.server.health()),
            ("GET", "models"): self._get_models,
            ("POST", "models"): self._post_model,
            ("GET", "jobs"): self._get_jobs,
            ("POST", "jobs"): lambda: self._post_job(query),
        }
        if method == "DELETE" and len(parts) == 2 and parts[0] in ("models", "jobs"):
            return (self._delete_model if parts[0] == "models" else self._delete_job)(parts[1])
        if not parts:
            raise ApiError(404, "no such endpoint; try GET /health")
        head, rest = parts[0], parts[1:]
        if not rest and (method, head) in routes:
            return routes[(method, head)]()
        if method == "GET" and head == "models" and len(rest) == 1:
            return self._get_model(rest[0])
        if method == "GET" and head == "jobs" and len(rest) in (1, 2):
            if len(rest) == 1:
                return self._json(200, self._job(rest[0]).to_json())
            if rest[1] == "result":
                return self._get_result(rest[0])
        if any(h == head for _, h in routes):
            raise ApiError(405, f"{method} is not allowed on {urlsplit(self.path).path}")
        raise ApiError(404, f"no such endpoint: {method} {urlsplit(self.path).path}")

    # --- bodies ----------------------------------------------------------------------------

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise ApiError(411, "Content-Length is required")
        try:
            length = int(raw)
        except ValueError:
            raise ApiError(400, f"Content-Length {raw!r} is not an integer") from None
        if length < 0:
            raise ApiError(400, "Content-Length is negative")
        if length > self.server.max_upload_bytes:
            raise ApiError(413, f"request body of {length} bytes exceeds this agent's limit of "
                                f"{self.server.max_upload_bytes} bytes (--max-upload-mb)")
        self._extend_deadline(length)
        return length

    def _chunks(self, length: int) -> Iterator[bytes]:
        left = length
        while left:
            data = self.rfile.read(min(CHUNK, left))
            if not data:
                raise ConnectionError(f"request body cut off after {length - left} of {length} bytes")
            left -= len(data)
            yield data
        # The client has sent everything: what follows (a model's check in its sandbox) is the agent's
        # own time, bounded by the sandbox's limit, not the client's deadline.
        self.server.deadlines.set(self.connection, self.server.limits.body_timeout_s
                                  + self.server.task.limits.model_timeout_s)

    def _read(self, length: int) -> bytes:
        return b"".join(self._chunks(length))

    # --- handlers --------------------------------------------------------------------------

    def _get_models(self) -> None:
        self._json(200, {"models": self.server.store.describe()})

    def _get_model(self, model_id: str) -> None:
        if not self.server.store.has(model_id):
            raise ApiError(404, f"model {model_id!r} is not held by this agent")
        self._json(200, self.server.store.manifest(model_id))

    def _post_model(self) -> None:
        length = self._content_length()
        raw = self.headers.get("X-Manifest-Length")
        try:
            mlen = int(raw) if raw is not None else -1
        except ValueError:
            mlen = -1
        if not 0 < mlen <= min(length, MAX_MANIFEST_BYTES):
            raise ApiError(400, "upload needs header X-Manifest-Length: N (1..4 MiB, within the body); "
                                "body = manifest JSON (N bytes) followed by the .tflite bytes")
        self._require_space(length)
        manifest = self._read(mlen)
        try:
            model_id, added = self.server.store.add(manifest, self._chunks(length - mlen),
                                                    validate=self.server.task.validate_model)
        except StoreConflict as exc:
            raise ApiError(409, str(exc)) from None
        except StoreError as exc:
            raise ApiError(400, str(exc)) from None
        self._json(201 if added else 200, {"id": model_id, "added": added})

    def _delete_model(self, model_id: str) -> None:
        store = self.server.store
        with self.server.models_lock:
            if not store.has(model_id):
                raise ApiError(404, f"model {model_id!r} is not held by this agent")
            active = self.server.jobs.active(model_id)
            if active:
                raise ApiError(409, f"model {model_id[:12]}… has {active} queued or running jobs; cancel "
                                    "them (DELETE /jobs/<id>) or wait until they finish")
            store.delete(model_id)
        self._json(200, {"id": model_id, "deleted": True})

    def _get_jobs(self) -> None:
        self._json(200, {"jobs": [j.to_json() for j in self.server.jobs.list()]})

    def _job(self, job_id: str):
        try:
            return self.server.jobs.get(job_id)
        except KeyError as exc:
            raise ApiError(404, exc.args[0]) from None

    def _delete_job(self, job_id: str) -> None:
        try:
            job = self.server.jobs.cancel(job_id)
        except KeyError as exc:
            raise ApiError(404, exc.args[0]) from None
        except ValueError as exc:
            raise ApiError(409, str(exc)) from None
        self._json(200, job.to_json())

    def _post_job(self, query: dict[str, str]) -> None:
        model_id, kind = query.get("model", ""), query.get("kind", "ascent")
        if not is_model_id(model_id):
            raise ApiError(400, "POST /jobs needs ?model=<sha256 of a held model>&kind=" + "|".join(KINDS))
        if kind not in KINDS:
            raise ApiError(400, f"kind must be one of {', '.join(KINDS)}, got {kind[:40]!r}")
        self._require_model(model_id)
        length = self._content_length()
        limit = self.server.plan_limits.max_decoded_bytes + (1 << 20)
        if length > limit:
            raise ApiError(413, f"a plan of {length} bytes exceeds this agent's plan limit of {limit} bytes")
        self._require_space(length)
        # Small plans stay in memory, large ones go to a file: the body is never held twice.
        with tempfile.SpooledTemporaryFile(1 << 20, dir=self.server.store.staging_dir) as body:
            for chunk in self._chunks(length):
                body.write(chunk)
            body.seek(0)
            try:
                with PlanArchive(body, self.server.plan_limits) as archive:
                    plan = self.server.task.check(model_id, kind, archive)
            except PlanTooLarge as exc:
                raise ApiError(413, f"plan over this agent's limits: {exc}") from None
            except (ValueError, KeyError) as exc:
                self._require_model(model_id)  # deleted while the plan came in: 404, not the plan's fault
                raise ApiError(400, f"invalid plan: {exc}") from None
        with self.server.models_lock:  # held and queued at once: a DELETE waits, then sees the job (409)
            self._require_model(model_id)
            try:
                job = self.server.jobs.submit(model_id, kind, plan.to_bytes(compress=False))
            except QueueFull as exc:
                raise ApiError(429, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        self._json(202, job.to_json())

    def _require_model(self, model_id: str) -> None:
        if not self.server.store.has(model_id):
            raise ApiError(404, f"model {model_id} is not held by this agent; push it first (POST /models)")

    def _get_result(self, job_id: str) -> None:
        job = self._job(job_id)
        if job.status != "done":
            raise ApiError(409, f"job {job_id} is {job.status}" + (f": {job.error}" if job.error else
                                                                   "; poll GET /jobs/<id> until done"))
        try:
            data = self.server.jobs.result_bytes(job_id)
        except FileNotFoundError:
            raise ApiError(404, f"the result of job {job_id} is gone (only the newest are kept)") from None
        self._send(200, data, "application/octet-stream")


def serve(host: str, port: int, store_dir: str | os.PathLike, token: str | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, threads: int | None = None,
          kernels: str = "xnnpack", job_timeout_s: float | None = None, queue_cap: int = 16,
          max_connections: int | None = None, tls: TLSFiles | None = None, insecure: bool = False,
          min_free_mib: float | None = None, benchmark_model: str | None = None) -> None:
    """Run the agent until interrupted."""
    job_limits = JobLimits(job_timeout_s=job_timeout_s) if job_timeout_s else None
    connections = ConnectionLimits(max_connections=max_connections) if max_connections else None
    min_free = None if min_free_mib is None else int(min_free_mib * (1 << 20))
    server = AgentServer(host, port, store_dir, token, int(max_upload_mb * (1 << 20)), threads, kernels,
                         job_limits=job_limits, connections=connections, queue_cap=queue_cap, tls=tls,
                         insecure=insecure, min_free_bytes=min_free, benchmark_model=benchmark_model)
    bound = server.server_address
    scheme = "https" if server.tls else "http"
    auth = "token auth" if token else "no auth, loopback only"
    print(f"faceprobe-agent {__version__} listening on {scheme}://{bound[0]}:{bound[1]} (store {store_dir}, "
          f"{auth}, keeps {server.min_free_bytes >> 20} MiB free)", flush=True)
    if server.tls:
        print(f"TLS certificate SHA-256 fingerprint {server.tls.fingerprint} (clients: --agent-fingerprint)",
              flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
