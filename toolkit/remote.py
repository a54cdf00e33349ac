"""Client for board agents (`faceprobe-agent serve`): one agent or a fleet driven from threads.

Push a model (skipped when the agent already holds it: models are addressed by their sha256), submit
a probe plan, poll, fetch the result. Standard library HTTP; results decode to the same
``ProbeResult`` the host probe writes.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from device import tasks
from device.manifest import load_manifest, manifest_path_for, sha256_file
from device.plan import ProbePlan, ProbeResult

T = TypeVar("T")


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


class AgentClient:
    """One agent. ``token``: its bearer token (None when it runs on loopback without one)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        self.url, self.token, self.timeout = normalize_url(url), token, timeout

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:200] or exc.reason
            raise AgentError(self.url, f"{method} {path} -> {exc.code}: {message}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgentError(self.url, f"cannot reach the agent ({reason}); is `faceprobe-agent serve` "
                                       "running there?") from None

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

    def __init__(self, urls: str | Sequence[str], token: str | None = None, timeout: float = 60.0):
        self.clients = [AgentClient(u, token, timeout) for u in split_urls(urls)]

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
           manifest: str | os.PathLike | None = None) -> dict[str, str]:
    """Push a model to every agent (skipping those that hold it); returns {url: model id}."""
    return Fleet(urls, token).push(tflite, manifest)


def probe_remote(urls: str | Sequence[str], tflite: str | os.PathLike, plan: ProbePlan,
                 token: str | None = None, kind: str = "ascent", manifest: str | os.PathLike | None = None,
                 timeout: float = 3600.0) -> dict[str, ProbeResult | dict]:
    """Push ``tflite`` where needed, run ``plan`` on every agent at once, return {url: result}.

    ``kind="ascent"`` gives each board's finite-difference ProbeResult; ``"activations"`` its taps.
    """
    fleet = Fleet(urls, token)
    tflite, manifest = model_files(tflite, manifest)
    return fleet.map(lambda c: c.run(c.push(tflite, manifest), plan, kind, timeout))
