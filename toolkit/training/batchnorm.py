"""Batch-norm moving statistics: detect when they lag the trained weights, and re-estimate them.

After short training the moving averages (momentum 0.9-0.99) still remember the statistics of early
weights, so a model that is ~99 % accurate in training mode can be near chance in inference mode.
Re-estimation runs the training data forward in training mode and replaces every layer's moving
mean/variance by the population statistics of its input, accumulated over all batches.
"""

from __future__ import annotations

import numpy as np


def batchnorm_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _snapshot(layers) -> list:
    return [layer.get_weights() for layer in layers]


def _restore(layers, weights) -> None:
    for layer, w in zip(layers, weights, strict=True):
        layer.set_weights(w)


def reestimate_batchnorm(model, images: np.ndarray, batch_size: int = 64) -> int:
    """Replace every BatchNormalization layer's moving statistics by population statistics.

    ``images`` are normalised float32 model inputs. The forward passes run in training mode, where each
    layer normalises by its batch statistics, so the result does not depend on the old moving values.
    Returns the number of layers updated.
    """
    import keras
    import tensorflow as tf

    layers = batchnorm_layers(model)
    if not layers:
        return 0
    probe = keras.Model(model.input, [layer.input for layer in layers])

    @tf.function(reduce_retracing=True)
    def moments(x):
        outs = probe(x, training=True)
        return [(tf.reduce_sum(tf.cast(o, tf.float64), [0, 1, 2]),
                 tf.reduce_sum(tf.square(tf.cast(o, tf.float64)), [0, 1, 2]),
                 tf.cast(tf.reduce_prod(tf.shape(o)[:3]), tf.float64)) for o in outs]

    first = second = None
    count = np.zeros(len(layers))
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if len(batch) < 2:
            continue  # a single image has no batch statistics
        res = moments(tf.constant(batch))
        s1 = [r[0].numpy() for r in res]
        s2 = [r[1].numpy() for r in res]
        first = s1 if first is None else [a + b for a, b in zip(first, s1, strict=True)]
        second = s2 if second is None else [a + b for a, b in zip(second, s2, strict=True)]
        count += [float(r[2]) for r in res]
    if first is None:
        raise ValueError("batch-norm re-estimation needs at least 2 images")
    for layer, s1, s2, n in zip(layers, first, second, count, strict=True):
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(var.astype(np.float32))
    return len(layers)


def closed_set_accuracy(model, centres: np.ndarray, images: np.ndarray, labels: np.ndarray,
                        training: bool, batch_size: int = 64) -> float:
    """Accuracy of the nearest class centre (cosine) on ``images``, in training or inference mode.

    Training mode normalises by batch statistics and would move the moving averages, so they are
    restored afterwards.
    """
    layers = batchnorm_layers(model)
    saved = _snapshot(layers) if training else None
    w = centres / np.maximum(np.linalg.norm(centres, axis=0, keepdims=True), 1e-12)
    correct = 0
    for start in range(0, len(images), batch_size):
        emb = np.asarray(model(images[start:start + batch_size], training=training))
        correct += int(np.sum(np.argmax(emb @ w, axis=1) == labels[start:start + batch_size]))
    if saved is not None:
        _restore(layers, saved)
    return correct / max(len(images), 1)


def check_batchnorm(model, centres: np.ndarray, images: np.ndarray, labels: np.ndarray,
                    tolerance: float = 0.05, batch_size: int = 64) -> dict:
    """Compare inference- and training-mode accuracy; re-estimate the statistics when inference lags.

    The re-estimated statistics are kept only if they raise inference-mode accuracy.
    """
    # Mixed batches, as in training: datasets come sorted by identity, and single-identity batches
    # would give training mode (and the re-estimate) unrepresentative statistics.
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], np.asarray(labels)[order]
    train_acc = closed_set_accuracy(model, centres, images, labels, training=True, batch_size=batch_size)
    infer_acc = closed_set_accuracy(model, centres, images, labels, training=False, batch_size=batch_size)
    report = {"training_mode_accuracy": train_acc, "inference_accuracy": infer_acc,
              "lagging": bool(train_acc - infer_acc > tolerance), "reestimated": False,
              "tolerance": tolerance}
    if not report["lagging"]:
        return report
    layers = batchnorm_layers(model)
    saved = _snapshot(layers)
    reestimate_batchnorm(model, images, batch_size=batch_size)
    after = closed_set_accuracy(model, centres, images, labels, training=False, batch_size=batch_size)
    report["inference_accuracy_after"] = after
    if after > infer_acc:
        report["reestimated"] = True
    else:
        _restore(layers, saved)
    return report
