"""tf.data input pipeline: in-memory images, in-graph augmentation, batching, prefetch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .normalize import DEFAULT_NORMALIZATION

# Augmentation ranges: small enough that a face stays a face of the same person.
MAX_ROTATION_DEG = 8.0
SCALE_RANGE = (0.92, 1.08)
MAX_SHIFT = 0.06  # fraction of the image side
MAX_BRIGHTNESS = 0.10 * 255.0
CONTRAST_RANGE = (0.8, 1.2)


def _affine_transforms(seed: tf.Tensor, n: tf.Tensor, size: float) -> tf.Tensor:
    """Per-image projective transforms (output → input coordinates) for rotation, scale and shift."""
    params = tf.random.stateless_uniform([n, 4], seed=seed, minval=-1.0, maxval=1.0)
    angle = params[:, 0] * np.deg2rad(MAX_ROTATION_DEG)
    lo, hi = SCALE_RANGE
    scale = lo + (params[:, 1] + 1.0) * 0.5 * (hi - lo)
    tx, ty = params[:, 2] * MAX_SHIFT * size, params[:, 3] * MAX_SHIFT * size
    c = (size - 1.0) / 2.0
    a0, a1 = tf.cos(angle) / scale, tf.sin(angle) / scale
    b0, b1 = -a1, a0
    a2 = c - a0 * (c + tx) - a1 * (c + ty)
    b2 = c - b0 * (c + tx) - b1 * (c + ty)
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _augment(images: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
    """Random flip, small affine, brightness and contrast on a float batch of 0..255 pixels."""
    n, size = tf.shape(images)[0], tf.cast(tf.shape(images)[1], tf.float32)
    keys = tf.random.experimental.stateless_split(seeds, num=4)
    flip = tf.random.stateless_uniform([n, 1, 1, 1], seed=keys[0]) < 0.5
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=_affine_transforms(keys[1], n, size), output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    lo, hi = CONTRAST_RANGE
    contrast = tf.random.stateless_uniform([n, 1, 1, 1], seed=keys[2], minval=lo, maxval=hi)
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], seed=keys[3], minval=-MAX_BRIGHTNESS,
                                             maxval=MAX_BRIGHTNESS)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value((images - mean) * contrast + mean + brightness, 0.0, 255.0)


def make_dataset(images_uint8: np.ndarray, labels: np.ndarray, batch_size: int, training: bool, seed: int = 0,
                 augment: bool = True) -> tf.data.Dataset:
    """(normalised float32 images, int32 labels) batches.

    The uint8 images are held once in memory (cached); training shuffles each epoch by seed, drops the
    last partial batch when there is a full one (every step sees a whole batch for batch norm), and
    augments in-graph. Evaluation keeps the order and every image.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"make_dataset expects uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    mean, scale = DEFAULT_NORMALIZATION["mean"], DEFAULT_NORMALIZATION["scale"]
    ds = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.int32))).cache()
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training and len(images) >= batch_size)
    if training and augment:
        # one fresh seed pair per batch and per epoch, reproducible from `seed`
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (_augment(tf.cast(batch[0], tf.float32), s), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    ds = ds.map(lambda x, y: ((x - mean) / scale, y))
    return ds.prefetch(tf.data.AUTOTUNE)
