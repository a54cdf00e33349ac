"""What TensorBoard shows beyond loss and learning rate: the verification metric per epoch, and the probe's
pictures as `--probe-every` takes them."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

# Images embedded per epoch for the verification metric: few, so that it costs little beside an epoch
# (it follows the trend; `faceprobe evaluate` gives the number).
VERIFICATION_IMAGES = 64


class VerificationMetric(keras.callbacks.Callback):
    """Each epoch, 10-fold verification accuracy of the embedding (inference mode) on pairs of training
    faces, added to the epoch's logs as ``verification_accuracy``: TensorBoard plots it and history.json
    keeps it. Training faces, not unseen people: it tracks how the embedding forms, not how it generalises.
    """

    def __init__(self, embedding: keras.Model, images_uint8: np.ndarray, labels: np.ndarray, seed: int = 0,
                 max_images: int = VERIFICATION_IMAGES):
        super().__init__()
        from ..data import make_pairs, normalize

        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(labels), size=min(max_images, len(labels)), replace=False))
        self.embedding, labels = embedding, np.asarray(labels)[pick]
        self.images = normalize(images_uint8[pick])
        try:
            self.pairs = make_pairs(labels, n_folds=10, seed=seed)
        except ValueError:  # too few same-person images for 10 folds: no metric rather than a noisy one
            self.pairs = None

    def on_epoch_end(self, epoch, logs=None) -> None:
        if self.pairs is None or logs is None:
            return
        from ..evaluate import pair_scores, verification_metrics

        # predict's compiled function, built once: calling the model eagerly would cost an epoch's worth.
        emb = self.embedding.predict(self.images, batch_size=64, verbose=0).astype(np.float64)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        scores = pair_scores(emb, self.pairs.left, self.pairs.right)
        logs["verification_accuracy"] = verification_metrics(scores, self.pairs.issame,
                                                             self.pairs.fold)["verification_accuracy"]


class ProbePictures(keras.callbacks.Callback):
    """Put each snapshot that the emergence probe writes (``SNAPSHOTS/iter_*.npz``: the ascent's change
    per image and target) into TensorBoard as one picture per stage: the first image's change for every
    probed channel, side by side."""

    def __init__(self, snapshots: str | os.PathLike, log_dir: str | os.PathLike, stages: list[str]):
        super().__init__()
        self.snapshots, self.log_dir, self.stages = Path(snapshots), Path(log_dir), stages
        self.seen: set[Path] = set()
        self._writer = None

    def _write_new(self) -> None:
        import tensorflow as tf

        new = sorted(p for p in self.snapshots.glob("iter_*.npz") if p not in self.seen)
        if not new:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default():
            for path in new:
                with np.load(path) as z:
                    delta = z["delta"][0].astype(np.float32)  # (targets, H, W, 3) of the first image
                step = int(path.stem.removeprefix("iter_"))
                for stage, idx in _by_stage(self.stages).items():
                    tf.summary.image(f"probe/{stage}", _tile(delta[idx])[None], step=step)
                self.seen.add(path)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._write_new()

    def on_train_end(self, logs=None) -> None:
        self._write_new()


def _by_stage(stages: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for j, s in enumerate(stages):
        out.setdefault(s, []).append(j)
    return out


def _tile(changes: np.ndarray) -> np.ndarray:
    """Signed changes (n, H, W, 3) side by side in [0, 1], grey = no change (one scale per picture)."""
    scale = max(float(np.abs(changes).max()), 1e-8)
    row = np.concatenate(list(changes / (2 * scale) + 0.5), axis=1)
    return np.clip(row, 0, 1)
