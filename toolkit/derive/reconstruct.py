"""Least-squares reconstruction of a pruned student before distillation: every convolution and dense layer,
in depth order, is refitted so that on the student's own inputs (which pruning and the layers refitted
before it changed) it reproduces the teacher's output at the channels it keeps."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from .graph import Graph
from .prune import positions


def _rows(layer, x: np.ndarray) -> np.ndarray:
    """The inputs each output position of ``layer`` reads, one row per position (im2col)."""
    if isinstance(layer, layers.Dense):
        return x.reshape(-1, x.shape[-1])
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    patches = tf.image.extract_patches(x, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1],
                                       layer.padding.upper())
    return patches.numpy().reshape(-1, kh * kw * x.shape[-1])


def _refittable(layer) -> bool:
    if isinstance(layer, layers.Dense):
        return True
    return (type(layer) is layers.Conv2D and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and layer.data_format == "channels_last")


def reconstruct(teacher_graph: Graph, kept: frozenset[int], student: keras.Model, images: np.ndarray,
                max_rows: int = 40_000, ridge: float = 1e-2, seed: int = 0) -> list[dict]:
    """Refit ``student``'s layers in place on normalised ``images``; returns per layer its name and the
    relative error to the teacher's output before and after (mean square over the kept channels)."""
    rng = np.random.default_rng(seed)
    report = []
    for call in teacher_graph.calls:
        if not isinstance(call.op, (layers.Conv2D, layers.Dense)) or not _refittable(call.op):
            continue
        layer = student.get_layer(call.op.name)
        if layer.input is student.input:  # reads the image itself: nothing upstream changed
            continue
        x = np.asarray(keras.Model(student.input, layer.input)(images, training=False), np.float32)
        target = keras.Model(teacher_graph.inputs[0], teacher_graph.tensors[call.outputs[0]])
        y = np.asarray(target(images, training=False), np.float64)
        out = positions(teacher_graph, call.outputs[0], kept)
        y = np.take(y, out, axis=-1).reshape(-1, len(out))
        p = _rows(layer, x).astype(np.float64)
        if len(p) > max_rows:
            pick = rng.choice(len(p), max_rows, replace=False)
            p, y = p[pick], y[pick]
        weights = layer.get_weights()
        before = p @ weights[0].reshape(p.shape[1], -1) + (weights[1] if layer.use_bias else 0.0)
        if layer.use_bias:
            p = np.concatenate([p, np.ones((len(p), 1))], axis=1)
        gram = p.T @ p
        gram[np.diag_indices_from(gram)] += ridge * np.trace(gram) / len(gram)
        w = np.linalg.solve(gram, p.T @ y)
        scale = float(np.mean(y**2)) + 1e-12
        error = float(np.mean((before - y) ** 2) / scale), float(np.mean((p @ w - y) ** 2) / scale)
        if error[1] < error[0]:  # a layer whose inputs pruning left alone keeps its own weights
            kernel = w[: -1 if layer.use_bias else None].reshape(weights[0].shape).astype(np.float32)
            layer.set_weights([kernel] + ([w[-1].astype(np.float32)] if layer.use_bias else []))
        report.append({"layer": layer.name, "error_before": error[0], "error_after": min(error)})
    return report
