"""Content-addressed model store for the board agent.

Layout under the store root::

    lock                             held (fcntl) by the one agent serving this store
    models/<sha256>/model.tflite     the uploaded flatbuffer, named by its sha256
    models/<sha256>/manifest.json    its manifest
    models/<sha256>/needs.json       what loading it and one invocation cost, measured at upload
    staging/<random>/                uploads in progress and deletions (wiped at start-up)

The store is the agent's private state (``device.private``): a store with a link, a foreign owner or
a folder or file others may write is refused at start-up, folders are 0700 and files 0600, and held
files are read without following links.

An upload is streamed into its own staging folder, validated (by the caller's ``validate``: the
agent loads and runs the model in a sandbox), fsynced and then renamed into ``models/`` in one
``os.rename``: a crash or ``kill -9`` at any point leaves either no entry or a complete one, never a
torn file under ``models/``. A model is deleted by renaming its folder into staging first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from .jsonsafe import loads_json
from .manifest import validate_manifest, validate_tflite_bytes
from .private import DIR_MODE, FILE_MODE, check_tree, is_plain_dir, is_plain_file, make_dir, read_file

MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
NEEDS_FILE = "needs.json"
LOCK_FILE = "lock"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(ValueError):
    """An upload or lookup the store refuses; the message says what is wrong."""


class StoreConflict(StoreError):
    """The model is held already with another manifest."""


class StoreLocked(OSError):
    """Another agent serves this store."""


def is_model_id(text: str) -> bool:
    return bool(_SHA256.match(text))


def validate_upload(head: bytes, manifest_bytes: bytes, sha256: str) -> None:
    """Refuse an upload unless it is a TFLite flatbuffer with a current-schema manifest naming its sha256."""
    try:
        validate_tflite_bytes(head, "the uploaded model")
        manifest = loads_json(manifest_bytes, "the manifest")
        validate_manifest(manifest, "the uploaded manifest")
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    if manifest["sha256"] != sha256:
        raise StoreError(f"the manifest's sha256 {str(manifest['sha256'])[:12]}… does not match the uploaded "
                         f"file ({sha256[:12]}…); upload the .tflite together with its own manifest")


def _not_held(model_id: str) -> KeyError:
    return KeyError(f"model {model_id!r} is not held by this agent; push it first (POST /models)")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path):
    """A new private file (0600, never through a link) open for writing."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE), "wb")


def _write_synced(path: Path, data: bytes) -> None:
    with _create(path) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class ModelStore:
    """Models held by this agent, keyed by the sha256 of their ``.tflite``; one agent per store."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.staging_dir = self.root / "staging"
        self.root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.root, DIR_MODE)
        except FileExistsError:
            pass
        check_tree(self.root)  # before anything in it is opened, cleaned or served
        make_dir(self.root)
        self._lock_fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise StoreLocked(f"another faceprobe-agent is serving the store {self.root}; stop it first, or "
                              "give this one its own --store") from None
        make_dir(self.models_dir)
        # Anything left in staging is an upload that never finished or a deletion cut short (checked
        # above: no link leads out of it, and rmtree unlinks links rather than following them).
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        make_dir(self.staging_dir)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the store for another agent."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.models_dir.iterdir() if self.has(p.name))

    def has(self, model_id: str) -> bool:
        """Held: a folder named by a sha256 with the model and its manifest in it, none of them a link."""
        d = self.models_dir / model_id
        return (is_model_id(model_id) and is_plain_dir(d) and is_plain_file(d / MODEL_FILE)
                and is_plain_file(d / MANIFEST_FILE))

    def paths(self, model_id: str) -> tuple[Path, Path]:
        """(tflite, manifest) paths of a held model."""
        if not self.has(model_id):
            raise _not_held(model_id)
        d = self.models_dir / model_id
        return d / MODEL_FILE, d / MANIFEST_FILE

    def _read(self, model_id: str, name: str) -> bytes | None:
        """A held model's file (None when absent), never through a link: a link planted there makes the
        model not held (KeyError)."""
        self.paths(model_id)
        try:
            return read_file(self.root, self.models_dir.name, model_id, name)
        except FileNotFoundError:
            return None
        except OSError:
            raise _not_held(model_id) from None

    def manifest(self, model_id: str) -> dict:
        data = self._read(model_id, MANIFEST_FILE)
        if data is None:  # deleted meanwhile
            raise _not_held(model_id)
        return json.loads(data)

    def needs(self, model_id: str) -> dict:
        """What the model's check at upload measured (memory_bytes, per_image_bytes, seconds)."""
        data = self._read(model_id, NEEDS_FILE)
        return json.loads(data) if data is not None else {"memory_bytes": 0, "per_image_bytes": 0}

    def describe(self) -> list[dict]:
        out = []
        for mid in self.ids():
            try:
                m = self.manifest(mid)
                size = self.paths(mid)[0].stat().st_size
            except (KeyError, OSError):  # deleted meanwhile
                continue
            out.append({"id": mid, "model": m.get("model"), "variant": m.get("variant"), "bytes": size})
        return out

    def add(self, manifest_bytes: bytes, chunks: Iterable[bytes],
            validate: Callable[[Path, Path], dict] | None = None) -> tuple[str, bool]:
        """Store a model streamed as ``chunks``; returns (model id, newly added).

        ``validate(tflite, manifest)`` runs on the staged files and returns what the model needs (kept
        as needs.json); a ValueError from it refuses the upload. Raises StoreError when the upload is
        invalid, StoreConflict when the model is held with another manifest; an exception from
        ``chunks`` (a cut-off connection) propagates after the staging folder is removed.
        """
        stage = Path(tempfile.mkdtemp(prefix="upload-", dir=self.staging_dir))
        try:
            digest = hashlib.sha256()
            head = b""
            with _create(stage / MODEL_FILE) as fh:
                for chunk in chunks:
                    if len(head) < 8:
                        head += chunk[:8]
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            sha = digest.hexdigest()
            validate_upload(head, manifest_bytes, sha)
            if self.has(sha):
                return sha, self._same_manifest(sha, manifest_bytes)
            _write_synced(stage / MANIFEST_FILE, manifest_bytes)
            if validate is not None:
                try:
                    needs = validate(stage / MODEL_FILE, stage / MANIFEST_FILE)
                except ValueError as exc:
                    raise StoreError(str(exc)) from None
                _write_synced(stage / NEEDS_FILE, json.dumps(needs).encode())
            _fsync_dir(stage)
            with self._lock:
                if self.has(sha):
                    return sha, self._same_manifest(sha, manifest_bytes)
                os.rename(stage, self.models_dir / sha)
                _fsync_dir(self.models_dir)
            return sha, True
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _same_manifest(self, sha: str, manifest_bytes: bytes) -> bool:
        """False (not added) when the held manifest is this one; StoreConflict when it is another."""
        if json.loads(manifest_bytes) != self.manifest(sha):
            raise StoreConflict(f"model {sha[:12]}… is held already with another manifest; a model keeps the "
                                f"manifest it was uploaded with: DELETE /models/{sha} first to replace it")
        return False

    def delete(self, model_id: str) -> None:
        """Remove a held model (KeyError when it is not held); a crash midway leaves it whole or gone."""
        with self._lock:
            self.paths(model_id)
            # A rename only, no new folder: deleting is how a full disk is freed, so it must not need space.
            gone = self.staging_dir / f"delete-{secrets.token_hex(8)}"
            os.rename(self.models_dir / model_id, gone)
            _fsync_dir(self.models_dir)
        shutil.rmtree(gone, ignore_errors=True)

