"""`faceprobe-agent serve`: the board's HTTP agent (standard library only, plus numpy + LiteRT for jobs).

Endpoints (JSON unless stated; every endpoint, /health included, needs ``Authorization: Bearer
<token>`` when the agent has a token, because /health names the models held and the machine):

- ``GET  /health``                runtime, version, machine, models held, jobs by status
- ``GET  /models``                models held (id = sha256 of the .tflite, model, variant, bytes)
- ``GET  /models/<id>``           a held model's manifest
- ``POST /models``                upload: header ``X-Manifest-Length: N``; body = the manifest JSON (N
  bytes) followed by the .tflite bytes. Validated (TFLite identifier, manifest schema, sha256) before
  it is stored. 201 when added, 200 when already held.
- ``POST /jobs?model=<id>&kind=ascent|activations|embeddings``   body = ``ProbePlan.to_bytes()``; 202 + job id
  (``embeddings`` reads only the plan's images: the deploy model's embeddings)
- ``GET  /jobs``, ``GET /jobs/<id>``                   job status
- ``GET  /jobs/<id>/result``      the result as .npz bytes (409 while queued/running or when failed)

Errors are JSON ``{"error": message, "status": code}``. The agent refuses to listen on anything but
loopback without a token, and refuses request bodies over the upload limit with 413.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import platform
import socket
import sys
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import __version__
from .jobs import KINDS, JobQueue
from .store import ModelStore, StoreError, is_model_id
from .tasks import Task

CHUNK = 1 << 16
DEFAULT_MAX_UPLOAD_MB = 256
MAX_MANIFEST_BYTES = 4 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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


class AgentServer(ThreadingHTTPServer):
    """A threading HTTP server that holds the store, the job queue and the auth settings."""

    daemon_threads = True

    def __init__(self, host: str, port: int, store_dir: str | os.PathLike, token: str | None = None,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20, threads: int | None = None,
                 kernels: str = "xnnpack"):
        if not token and not is_loopback(host):
            raise ValueError(f"refusing to listen on {host!r} without a token: anyone on the network could "
                             "upload models and run jobs. Pass --token-file FILE (or --token T), or listen "
                             "on 127.0.0.1")
        if token is not None and not token.strip():
            raise ValueError("the token is empty; write a long random string to the token file")
        self.token = token.strip().encode() if token else None
        self.max_upload_bytes = int(max_upload_bytes)
        self.store = ModelStore(store_dir)
        self.task = Task(self.store, threads=threads, kernels=kernels)
        self.jobs = JobQueue(Path(store_dir) / "results", self.task.execute)
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), AgentHandler)

    def health(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for job in self.jobs.list():
            counts[job.status] = counts.get(job.status, 0) + 1
        return {"status": "ok", "agent": "faceprobe-agent", "version": __version__,
                "runtime": runtime_versions(), "kernels": self.task.kernels, "threads": self.task.threads,
                "machine": platform.machine(), "system": platform.system(),
                "python": platform.python_version(), "models": self.store.ids(), "jobs": counts}


class AgentHandler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"faceprobe-agent/{__version__}"
    timeout = 60  # seconds a client may stall mid-request before its thread gives up

    # --- responses -------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
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

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON errors everywhere, including those http.server raises for malformed request lines."""
        self.close_connection = True
        # A request line too broken to name its version defaults to HTTP/0.9, which has no status line.
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        try:
            msg = message or HTTPStatus(code).phrase
        except ValueError:
            msg = message or "error"
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        self._json(code, {"error": msg, "status": code}, headers)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature fixed by http.server
        if not getattr(self.server, "quiet", False):
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    # --- dispatch --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            self._authorise()
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._route(method, parts, query)
        except ApiError as exc:
            self.send_error(exc.status, exc.message)
        except (ConnectionError, TimeoutError) as exc:
            # The client went away mid-request; nothing to answer, the store is untouched.
            self.close_connection = True
            self.log_message("connection lost: %s", exc)
        except Exception as exc:  # the server must survive any request
            self.log_message("internal error: %r", exc)
            self.send_error(500, f"internal error: {type(exc).__name__}: {exc}")

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
            raise ApiError(405, f"{method} is not allowed on {self.path}")
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
        return length

    def _chunks(self, length: int) -> Iterator[bytes]:
        left = length
        while left:
            data = self.rfile.read(min(CHUNK, left))
            if not data:
                raise ConnectionError(f"request body cut off after {length - left} of {length} bytes")
            left -= len(data)
            yield data

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
        manifest = self._read(mlen)
        try:
            model_id, added = self.server.store.add(manifest, self._chunks(length - mlen))
        except StoreError as exc:
            raise ApiError(400, str(exc)) from None
        self._json(201 if added else 200, {"id": model_id, "added": added})

    def _get_jobs(self) -> None:
        self._json(200, {"jobs": [j.to_json() for j in self.server.jobs.list()]})

    def _job(self, job_id: str):
        try:
            return self.server.jobs.get(job_id)
        except KeyError as exc:
            raise ApiError(404, exc.args[0]) from None

    def _post_job(self, query: dict[str, str]) -> None:
        model_id, kind = query.get("model", ""), query.get("kind", "ascent")
        if not is_model_id(model_id):
            raise ApiError(400, "POST /jobs needs ?model=<sha256 of a held model>&kind=" + "|".join(KINDS))
        if kind not in KINDS:
            raise ApiError(400, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not self.server.store.has(model_id):
            raise ApiError(404, f"model {model_id} is not held by this agent; push it first (POST /models)")
        plan = self._read(self._content_length())
        try:
            self.server.task.check(model_id, kind, plan)
        except ValueError as exc:
            raise ApiError(400, f"invalid plan: {exc}") from None
        job = self.server.jobs.submit(model_id, kind, plan)
        self._json(202, job.to_json())

    def _get_result(self, job_id: str) -> None:
        job = self._job(job_id)
        if job.status != "done":
            raise ApiError(409, f"job {job_id} is {job.status}" + (f": {job.error}" if job.error else
                                                                   "; poll GET /jobs/<id> until done"))
        self._send(200, job.result_path.read_bytes(), "application/octet-stream")


def serve(host: str, port: int, store_dir: str | os.PathLike, token: str | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, threads: int | None = None,
          kernels: str = "xnnpack") -> None:
    """Run the agent until interrupted."""
    server = AgentServer(host, port, store_dir, token, int(max_upload_mb * (1 << 20)), threads, kernels)
    bound = server.server_address
    print(f"faceprobe-agent {__version__} listening on http://{bound[0]}:{bound[1]} "
          f"(store {store_dir}, {'token auth' if token else 'no auth, loopback only'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
