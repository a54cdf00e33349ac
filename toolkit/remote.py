"""Client for board agents (`faceprobe-agent serve`): one agent or a fleet driven from threads.

Push a model (skipped when the agent already holds it: models are addressed by their sha256), submit
a probe plan, poll, fetch the result. Standard library HTTP(S); results decode to the same
``ProbeResult`` the host probe writes.

An ``https://`` agent is trusted by its certificate's SHA-256 fingerprint: the ones pinned
(``--agent-fingerprint``), or else the one remembered for that host and port on first contact, as ssh
does (``~/.config/faceprobe/known_agents``, or ``$FACEPROBE_KNOWN_AGENTS``); a changed certificate is
refused. A token is never sent over plain HTTP beyond loopback unless the user says ``--insecure``.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from device import tasks
from device.agent import is_loopback
from device.files import write_atomic
from device.manifest import load_manifest, manifest_path_for, sha256_file
from device.plan import ProbePlan, ProbeResult
from device.tls import fingerprint, normalize_fingerprint

T = TypeVar("T")
KNOWN_AGENTS_ENV = "FACEPROBE_KNOWN_AGENTS"
_known_lock = threading.Lock()


class AgentError(RuntimeError):
    """An agent refused a request, failed a job, or could not be reached; the message names the agent."""

    def __init__(self, url: str, message: str, status: int | None = None):
        super().__init__(f"{url}: {message}")
        self.url, self.status = url, status


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url:
        raise ValueError("empty agent URL; pass e.g. http://board.local:8765")
    return url if "://" in url else f"http://{url}"


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> normalised URLs, duplicates dropped."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = list(dict.fromkeys(normalize_url(u) for u in items if u.strip()))
    if not out:
        raise ValueError("no agent URL given; pass --agent http://HOST:PORT[,http://HOST2:PORT]")
    return out


def model_files(tflite: str | os.PathLike, manifest: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The .tflite and its manifest, checked locally: a clear error here beats a rejected upload."""
    tflite = Path(tflite)
    if not tflite.is_file():
        raise FileNotFoundError(f"no model at {tflite}: pass a .tflite written by `faceprobe export`")
    manifest_path = Path(manifest) if manifest else manifest_path_for(tflite)
    load_manifest(manifest_path)
    return tflite, manifest_path


def known_agents_path() -> Path:
    """Where fingerprints remembered on first contact are kept."""
    return Path(os.environ.get(KNOWN_AGENTS_ENV) or Path.home() / ".config" / "faceprobe" / "known_agents")


@dataclass(frozen=True)
class Trust:
    """How a client trusts agents: pinned certificate fingerprints (any of them will do; none: trust on
    first use, remembered in ``known_agents``), and whether a token may travel over plain HTTP beyond
    loopback (``insecure``)."""

    fingerprints: tuple[str, ...] = ()
    insecure: bool = False
    known_agents: Path | None = None

    @classmethod
    def from_options(cls, fingerprints: str | Sequence[str] | None, insecure: bool = False) -> Trust:
        """From ``--agent-fingerprint`` (comma-separated, or repeated) and ``--insecure``."""
        items = fingerprints.split(",") if isinstance(fingerprints, str) else list(fingerprints or ())
        return cls(tuple(normalize_fingerprint(f) for f in items if f.strip()), insecure)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection whose peer certificate is checked by ``check(der)`` before any byte is sent."""

    def __init__(self, host: str, port: int | None, timeout: float, check: Callable[[bytes], None]):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # the pinned fingerprint is the trust, not a CA and a name
        context.verify_mode = ssl.CERT_NONE
        super().__init__(host, port, timeout=timeout, context=context)
        self._check = check

    def connect(self) -> None:
        super().connect()
        try:
            self._check(self.sock.getpeercert(binary_form=True))
        except BaseException:
            self.close()
            raise


class AgentClient:
    """One agent. ``token``: its bearer token (None when it runs on loopback without one); ``trust``: how
    its certificate is checked (https) and whether plain HTTP may carry the token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, trust: Trust | None = None):
        self.url, self.token, self.timeout = normalize_url(url), token, timeout
        self.trust = trust or Trust()
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"agent URL {self.url!r} must be http://HOST:PORT or https://HOST:PORT")
        self._parts = parts
        if parts.scheme == "http" and token and not is_loopback(parts.hostname) and not self.trust.insecure:
            raise ValueError(f"refusing to send the agent's token in clear text to {self.url}: use https:// "
                             "(start the agent with --tls-self-signed or --tls-cert/--tls-key), or pass "
                             "--insecure on a network you trust")

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self._parts.hostname, self._parts.port
        if self._parts.scheme == "https":
            return _PinnedHTTPS(host, port, self.timeout, self._check_certificate)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _check_certificate(self, der: bytes | None) -> None:
        """Refuse a certificate that is not pinned or not the one remembered for this agent."""
        seen = fingerprint(der or b"")
        if self.trust.fingerprints:
            if seen not in self.trust.fingerprints:
                raise AgentError(self.url, f"the agent's certificate has SHA-256 fingerprint {seen}, not "
                                           "one pinned with --agent-fingerprint: refusing to talk to it (if "
                                           "its certificate was replaced on purpose, pin the new one)")
            return
        path = self.trust.known_agents or known_agents_path()
        key = f"{self._parts.hostname}:{self._parts.port or 443}"
        with _known_lock:
            lines = path.read_text().splitlines() if path.is_file() else []
            known = dict(line.split(None, 1) for line in lines if len(line.split()) == 2)
            if key not in known:
                write_atomic(path, "".join(f"{line}\n" for line in [*lines, f"{key} {seen}"]).encode(), 0o600)
                print(f"faceprobe: first contact with the agent at {key}: remembering its certificate's "
                      f"SHA-256 fingerprint {seen} in {path}; compare it with the one the agent printed at "
                      "start", file=sys.stderr, flush=True)
                return
        if known[key].strip() != seen:
            raise AgentError(self.url, f"THE AGENT'S CERTIFICATE HAS CHANGED: SHA-256 fingerprint {seen}, "
                                       f"remembered {known[key].strip()} (in {path}). Someone may be in "
                                       "between; if the agent's certificate was replaced on purpose, delete "
                                       f"the line for {key} from that file or pass --agent-fingerprint")

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
        all_headers = dict(headers or {})
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, self._parts.path + path, body=body, headers=all_headers)
            resp = conn.getresponse()
            raw, status, reason = resp.read(), resp.status, resp.reason
        except (OSError, http.client.HTTPException) as exc:
            raise AgentError(self.url, f"cannot reach the agent ({exc}); is `faceprobe-agent serve` "
                                       "running there?") from None
        finally:
            conn.close()
        if status >= 400:
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:200] or reason
            raise AgentError(self.url, f"{method} {path} -> {status}: {message}", status)
        return raw

    def _json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Any:
        return json.loads(self._request(method, path, body, headers))

    def health(self) -> dict:
        return self._json("GET", "/health")

    def models(self) -> list[dict]:
        return self._json("GET", "/models")["models"]

    def push(self, tflite: str | os.PathLike, manifest: str | os.PathLike | None = None) -> str:
        """Upload a model and its manifest unless the agent holds it already; returns the model id."""
        tflite, manifest_path = model_files(tflite, manifest)
        model_id = sha256_file(tflite)
        if any(m["id"] == model_id for m in self.models()):
            return model_id
        manifest_bytes = manifest_path.read_bytes()
        body = manifest_bytes + tflite.read_bytes()
        reply = self._json("POST", "/models", body, {"X-Manifest-Length": str(len(manifest_bytes)),
                                                      "Content-Type": "application/octet-stream"})
        return reply["id"]

    def submit(self, model_id: str, plan: ProbePlan, kind: str = "ascent") -> str:
        """Queue a plan on a held model; returns the job id."""
        query = urllib.parse.urlencode({"model": model_id, "kind": kind})
        reply = self._json("POST", f"/jobs?{query}", plan.to_bytes(),
                           {"Content-Type": "application/octet-stream"})
        return reply["id"]

    def status(self, job_id: str) -> dict:
        return self._json("GET", f"/jobs/{job_id}")

    def wait(self, job_id: str, timeout: float = 3600.0, poll: float = 0.2) -> dict:
        """Poll until the job is done; AgentError when it failed or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if job["status"] == "done":
                return job
            if job["status"] in ("failed", "cancelled"):
                raise AgentError(self.url, f"job {job_id} {job['status']}: {job['error']}")
            if time.monotonic() > deadline:
                raise AgentError(self.url, f"job {job_id} still {job['status']} after {timeout:.0f} s")
            time.sleep(poll)

    def result(self, job_id: str) -> ProbeResult | dict:
        """A finished job's result: a ProbeResult (ascent) or an activations dict."""
        return tasks.decode(self._request("GET", f"/jobs/{job_id}/result"))

    def run(self, model_id: str, plan: ProbePlan, kind: str = "ascent", timeout: float = 3600.0
            ) -> ProbeResult | dict:
        job_id = self.submit(model_id, plan, kind)
        self.wait(job_id, timeout)
        return self.result(job_id)


class Fleet:
    """Several agents driven at once, one thread each; results come back keyed by agent URL."""

    def __init__(self, urls: str | Sequence[str], token: str | None = None, timeout: float = 60.0,
                 trust: Trust | None = None):
        self.clients = [AgentClient(u, token, timeout, trust) for u in split_urls(urls)]

    def map(self, fn: Callable[[AgentClient], T]) -> dict[str, T]:
        """``fn`` on every agent in parallel; AgentError listing every agent that failed."""
        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            futures = {c.url: pool.submit(fn, c) for c in self.clients}
        results, errors = {}, []
        for url, fut in futures.items():
            try:
                results[url] = fut.result()
            except (AgentError, ValueError, OSError) as exc:
                errors.append(str(exc))
        if errors:
            raise AgentError("fleet", f"{len(errors)} of {len(futures)} agents failed: " + "; ".join(errors))
        return results

    def push(self, tflite: str | os.PathLike, manifest: str | os.PathLike | None = None) -> dict[str, str]:
        tflite, manifest = model_files(tflite, manifest)
        return self.map(lambda c: c.push(tflite, manifest))


def deploy(urls: str | Sequence[str], tflite: str | os.PathLike, token: str | None = None,
           manifest: str | os.PathLike | None = None, trust: Trust | None = None) -> dict[str, str]:
    """Push a model to every agent (skipping those that hold it); returns {url: model id}."""
    return Fleet(urls, token, trust=trust).push(tflite, manifest)


def probe_remote(urls: str | Sequence[str], tflite: str | os.PathLike, plan: ProbePlan,
                 token: str | None = None, kind: str = "ascent", manifest: str | os.PathLike | None = None,
                 timeout: float = 3600.0, trust: Trust | None = None) -> dict[str, ProbeResult | dict]:
    """Push ``tflite`` where needed, run ``plan`` on every agent at once, return {url: result}.

    ``kind="ascent"`` gives each board's finite-difference ProbeResult; ``"activations"`` its taps.
    """
    fleet = Fleet(urls, token, trust=trust)
    tflite, manifest = model_files(tflite, manifest)
    return fleet.map(lambda c: c.run(c.push(tflite, manifest), plan, kind, timeout))
