"""Per-epoch training checkpoints: weights, optimizer state, epoch and history in one atomic file.

One file means a `kill -9` leaves either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from .. import atomic

CHECKPOINT_NAME = "last.npz"


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / CHECKPOINT_NAME


def save_checkpoint(path: Path, model, optimizer, epoch: int, history: list[dict], fingerprint: dict) -> None:
    """Write the training state after ``epoch`` completed epochs."""
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    meta = {"epoch": int(epoch), "history": history, "fingerprint": fingerprint,
            "n_weights": len(model.get_weights()), "n_optimizer": len(optimizer.variables)}
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    atomic.write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, model, optimizer, fingerprint: dict) -> tuple[int, list[dict]]:
    """Restore weights and optimizer state; returns (completed epochs, history).

    ``fingerprint`` (architecture, classes, schedule) must match the one saved, so a checkpoint is never
    resumed into a different run.
    """
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        saved = meta["fingerprint"]
        if saved != fingerprint:
            keys = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            diff = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in keys)
            raise ValueError(f"checkpoint {path} belongs to a different run ({diff}); "
                             "use a new --out directory or drop --resume")
        model.set_weights([z[f"w{i}"] for i in range(meta["n_weights"])])
        if len(optimizer.variables) != meta["n_optimizer"]:
            raise ValueError(f"checkpoint {path} has {meta['n_optimizer']} optimizer variables, the "
                             f"optimizer has {len(optimizer.variables)}")
        for i, var in enumerate(optimizer.variables):
            var.assign(z[f"o{i}"])
    return int(meta["epoch"]), list(meta["history"])
