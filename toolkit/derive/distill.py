"""Distillation: the pruned student learns to reproduce the teacher's L2-normalised embedding (and, as hints,
its maps at the deepest tap of each stride) on unlabeled faces under strong augmentation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from ..data.pipeline import AUGMENTATIONS, augment_batch
from ..zoo.taps import list_taps, tap_key, tap_model
from .config import DeriveConfig

_BLUR = np.outer(*[np.array([1, 4, 6, 4, 1], np.float32) / 16.0] * 2)


def hint_taps(model: keras.Model) -> list[str]:
    """The deepest tap of each stride: where the student's maps are held to the teacher's."""
    deepest: dict[int, str] = {}
    for t in list_taps(model):
        deepest[t.stride] = t.name
    return list(deepest.values())


def _choose(mask_p: float, n, seed) -> tf.Tensor:
    return tf.random.stateless_uniform([n, 1, 1, 1], seed=seed) < mask_p


def augment_faces(x: tf.Tensor, seed: tf.Tensor, cfg: DeriveConfig) -> tf.Tensor:
    """A float batch of 0..255 faces made new: part swaps and mixup between faces of the batch (new
    pseudo-faces, which the teacher labels itself), then flips, affine, brightness and contrast, blur,
    noise and occluding patches."""
    n, size = tf.shape(x)[0], tf.shape(x)[1]
    keys = tf.random.experimental.stateless_split(seed, num=10)
    rows = tf.cast(tf.range(size), tf.float32)[None, :, None, None]
    split = tf.random.stateless_uniform([n, 1, 1, 1], seed=keys[0], minval=0.42, maxval=0.62)
    # Aligned chips: the eyes of one face over the nose and mouth of another, blended over a band.
    band = tf.sigmoid((rows - split * tf.cast(size, tf.float32)) / 3.0)
    swapped = x * (1.0 - band) + tf.roll(x, 1, axis=0) * band
    x = tf.where(_choose(cfg.partswap, n, keys[1]), swapped, x)
    lam = tf.random.stateless_uniform([n, 1, 1, 1], seed=keys[2], minval=0.5, maxval=1.0)
    x = tf.where(_choose(cfg.mixup, n, keys[3]), lam * x + (1.0 - lam) * tf.roll(x, 2, axis=0), x)
    x = augment_batch(x, keys[4], AUGMENTATIONS["standard"])
    kernel = tf.constant(np.tile(_BLUR[:, :, None, None], (1, 1, 3, 1)))
    blurred = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")
    x = tf.where(_choose(cfg.blur, n, keys[5]), blurred, x)
    sigma = tf.random.stateless_uniform([n, 1, 1, 1], seed=keys[6], minval=2.0, maxval=10.0)
    noisy = x + sigma * tf.random.stateless_normal(tf.shape(x), seed=keys[7])
    x = tf.where(_choose(cfg.noise, n, keys[8]), noisy, x)
    # One grey patch a face: a hand, a scarf, sunglasses; a fifth to a third of the side.
    box = tf.random.stateless_uniform([n, 5], seed=keys[9])
    side = tf.cast(size, tf.float32)
    h, w = (0.2 + 0.15 * box[:, 0]) * side, (0.2 + 0.15 * box[:, 1]) * side
    top, left = box[:, 2] * (side - h), box[:, 3] * (side - w)
    cols = tf.cast(tf.range(size), tf.float32)
    inside = (
        (rows >= top[:, None, None, None])
        & (rows < (top + h)[:, None, None, None])
        & (cols[None, None, :, None] >= left[:, None, None, None])
        & (cols[None, None, :, None] < (left + w)[:, None, None, None])
    )
    occlude = inside & (box[:, 4] < cfg.occlusion)[:, None, None, None]
    x = tf.where(occlude, tf.fill(tf.shape(x), 110.0), x)
    return tf.clip_by_value(x, 0.0, 255.0)


@dataclass(eq=False)  # hashable by identity: tf.function caches its traces per instance
class Distiller:
    """The teacher, the student and one training step between them."""

    teacher: keras.Model
    student: keras.Model
    hints: dict[str, list[int]]  # hint tap -> the teacher channels the student kept
    cfg: DeriveConfig
    normalization: dict
    strategy: object
    centre: np.ndarray | None = None  # the teacher's mean normalised embedding over the training faces

    def __post_init__(self):
        size_t, size_s = int(self.teacher.input_shape[1]), int(self.student.input_shape[1])
        self.resize = size_t != size_s
        self.hint_weight = self.cfg.hint_weight
        names = list(self.hints) if self.hint_weight else []
        self.teacher_out = tap_model(self.teacher, names)
        with self.strategy.scope():
            self.student_out = tap_model(self.student, names)
            # A plain rate held in the optimizer's variable: `run_epochs` sets it each step from the
            # progress in steps or minutes, whichever is further along.
            self.optimizer = keras.optimizers.Adam(learning_rate=self.cfg.learning_rate)
            self.optimizer.build(self.student.trainable_variables)
        self.names = names
        self.size = size_s

    def _replica_step(self, x_uint8, seed):
        ctx = tf.distribute.get_replica_context()
        x = x_uint8[ctx.replica_id_in_sync_group :: ctx.num_replicas_in_sync]
        x = augment_faces(tf.cast(x, tf.float32), seed, self.cfg)
        xn = (x - self.normalization["mean"]) / self.normalization["scale"]
        t = self.teacher_out(xn, training=False)
        # Area-like (antialiased) resizing, as the faces are shrunk for evaluation and deployment.
        xs = tf.image.resize(xn, (self.size, self.size), antialias=True) if self.resize else xn
        with tf.GradientTape() as tape:
            s = self.student_out(xs, training=True)
            cos = tf.reduce_sum(
                tf.math.l2_normalize(s["embedding"], -1) * tf.math.l2_normalize(t["embedding"], -1), -1
            )
            per_example = 1.0 - cos
            if self.cfg.centred_weight and self.centre is not None:
                # Face descriptors share a large common direction: a student that predicts it scores a
                # high cosine while telling people apart poorly. About the mean, only what differs counts.
                mu = tf.constant(self.centre, tf.float32)
                per_example += self.cfg.centred_weight * (1.0 - tf.reduce_sum(
                    tf.math.l2_normalize(tf.math.l2_normalize(s["embedding"], -1) - mu, -1)
                    * tf.math.l2_normalize(tf.math.l2_normalize(t["embedding"], -1) - mu, -1), -1))
            for name in self.names:
                k = tap_key(name)
                target = tf.gather(t[k], self.hints[name], axis=-1)
                if self.resize:  # a smaller student's maps are held to the teacher's, shrunk to their size
                    target = tf.image.resize(target, tf.shape(s[k])[1:3], antialias=True)
                err = tf.reduce_mean(tf.square(s[k] - target), axis=[1, 2, 3])
                per_example += (
                    self.hint_weight * err / (tf.reduce_mean(tf.square(target)) + 1e-6) / len(self.names)
                )
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.cfg.batch_size)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return tf.reduce_sum(per_example), tf.reduce_sum(cos)

    @tf.function
    def step(self, x_uint8, seed):
        results = self.strategy.run(self._replica_step, args=(x_uint8, seed))
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    def embed(self, model: keras.Model, faces: np.ndarray) -> np.ndarray:
        return embed_faces(model, faces, self.normalization)


def embed_faces(model: keras.Model, faces: np.ndarray, normalization: dict) -> np.ndarray:
    """L2-normalised embeddings of uint8 faces, resized to ``model``'s input size."""
    size = int(model.input_shape[1])
    out = []
    for start in range(0, len(faces), 64):
        x = (faces[start : start + 64].astype(np.float32) - normalization["mean"]) / normalization["scale"]
        if x.shape[1] != size:
            x = tf.image.resize(x, (size, size), antialias=True).numpy()
        out.append(np.asarray(model(x, training=False), np.float64))
    e = np.concatenate(out)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def mean_embedding(model: keras.Model, faces: np.ndarray, normalization: dict) -> np.ndarray:
    """The mean of ``model``'s L2-normalised embeddings of uint8 ``faces``."""
    return embed_faces(model, faces, normalization).mean(axis=0).astype(np.float32)


def learning_rate(cfg: DeriveConfig, progress: float) -> float:
    """Cosine decay from the base rate to ``final_lr_fraction`` of it as ``progress`` runs 0 -> 1."""
    floor = cfg.learning_rate * cfg.final_lr_fraction
    return floor + (cfg.learning_rate - floor) * 0.5 * (
        1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))
    )


def run_epochs(
    d: Distiller,
    pool: np.ndarray,
    start_epoch: int,
    elapsed: float,
    on_epoch: Callable[[int, dict], None],
    progress: bool = True,
    on_step: Callable[[], None] | None = None,
) -> float:
    """Train from ``start_epoch`` until the epochs or the minutes run out; ``on_epoch(epoch, logs)`` after
    each (checkpoint, summaries), ``on_step()`` after every step. Returns the seconds spent in all,
    ``elapsed`` included."""
    from tqdm import tqdm

    cfg = d.cfg
    budget = cfg.minutes * 60.0 if cfg.minutes else None
    total = cfg.epochs * cfg.steps_per_epoch
    pool_t = tf.constant(pool)
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        t0, sums = time.perf_counter(), np.zeros(3)
        bar = tqdm(
            range(cfg.steps_per_epoch),
            desc=f"distil {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            unit="step",
        )
        for i in bar:
            spent = elapsed + time.perf_counter() - t0
            done = (epoch * cfg.steps_per_epoch + i) / total
            d.optimizer.learning_rate = learning_rate(cfg, max(done, spent / budget if budget else 0.0))
            idx = rng.integers(0, len(pool), cfg.batch_size)
            loss, cos = d.step(tf.gather(pool_t, idx), tf.constant(rng.integers(0, 2**31, 2), tf.int64))
            sums += [float(loss), float(cos), cfg.batch_size]
            if on_step is not None:
                on_step()
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}")
            if budget and elapsed + time.perf_counter() - t0 >= budget:
                break
        elapsed += time.perf_counter() - t0
        on_epoch(
            epoch,
            {
                "loss": sums[0] / sums[2],
                "train_cosine": sums[1] / sums[2],
                "learning_rate": float(np.asarray(d.optimizer.learning_rate)),
                "seconds": elapsed,
                "steps": int(sums[2] // cfg.batch_size),
            },
        )
        if budget and elapsed >= budget:
            break
    return elapsed
