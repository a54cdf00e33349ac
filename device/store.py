"""Content-addressed model store for the board agent.

Layout under the store root::

    models/<sha256>/model.tflite     the uploaded flatbuffer, named by its sha256
    models/<sha256>/manifest.json    its manifest
    staging/<random>/                uploads in progress (wiped at start-up)

An upload is streamed into its own staging folder, validated, fsynced and then renamed into
``models/`` in one ``os.rename``: a crash or ``kill -9`` at any point leaves either no entry or a
complete one, never a torn file under ``models/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from .manifest import check_tflite_bytes, validate_manifest

MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(ValueError):
    """An upload or lookup the store refuses; the message says what is wrong."""


def is_model_id(text: str) -> bool:
    return bool(_SHA256.match(text))


def check_upload(head: bytes, manifest_bytes: bytes, sha256: str) -> None:
    """Refuse an upload unless it is a TFLite flatbuffer with a current-schema manifest naming its sha256."""
    try:
        check_tflite_bytes(head, "the uploaded model")
        try:
            manifest = json.loads(manifest_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"the manifest is not valid JSON ({exc})") from exc
        validate_manifest(manifest, "the uploaded manifest")
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    if manifest["sha256"] != sha256:
        raise StoreError(f"the manifest's sha256 {str(manifest['sha256'])[:12]}… does not match the uploaded "
                         f"file ({sha256[:12]}…); upload the .tflite together with its own manifest")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """Models held by this agent, keyed by the sha256 of their ``.tflite``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.staging_dir = self.root / "staging"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        # Anything left in staging is an upload that never finished.
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.models_dir.iterdir()
                      if is_model_id(p.name) and (p / MODEL_FILE).is_file())

    def has(self, model_id: str) -> bool:
        return is_model_id(model_id) and (self.models_dir / model_id / MODEL_FILE).is_file()

    def paths(self, model_id: str) -> tuple[Path, Path]:
        """(tflite, manifest) paths of a held model."""
        if not self.has(model_id):
            raise KeyError(f"model {model_id!r} is not held by this agent; push it first (POST /models)")
        d = self.models_dir / model_id
        return d / MODEL_FILE, d / MANIFEST_FILE

    def manifest(self, model_id: str) -> dict:
        return json.loads(self.paths(model_id)[1].read_text())

    def describe(self) -> list[dict]:
        out = []
        for mid in self.ids():
            m = self.manifest(mid)
            out.append({"id": mid, "model": m.get("model"), "variant": m.get("variant"),
                        "bytes": self.paths(mid)[0].stat().st_size})
        return out

    def add(self, manifest_bytes: bytes, chunks: Iterable[bytes]) -> tuple[str, bool]:
        """Store a model streamed as ``chunks``; returns (model id, newly added).

        Raises StoreError when the upload is invalid; an exception from ``chunks`` (a cut-off
        connection) propagates after the staging folder is removed.
        """
        stage = Path(tempfile.mkdtemp(prefix="upload-", dir=self.staging_dir))
        try:
            digest = hashlib.sha256()
            head = b""
            with open(stage / MODEL_FILE, "wb") as fh:
                for chunk in chunks:
                    if len(head) < 8:
                        head += chunk[:8]
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            sha = digest.hexdigest()
            check_upload(head, manifest_bytes, sha)
            with open(stage / MANIFEST_FILE, "wb") as fh:
                fh.write(manifest_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(stage)
            with self._lock:
                if self.has(sha):
                    return sha, False
                os.rename(stage, self.models_dir / sha)
                _fsync_dir(self.models_dir)
            return sha, True
        finally:
            shutil.rmtree(stage, ignore_errors=True)
