"""Margin-softmax heads: class weights on the unit sphere, a margin on the true class while training."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="faceprobe")
class MarginHead(keras.layers.Layer):
    """Scaled cosine logits with an additive margin on the target class.

    ``kind="arcface"``: s * cos(theta + m) for the target (additive angular margin);
    ``kind="cosface"``: s * (cos(theta) - m). In inference mode no margin is applied, so the logits
    are plain scaled cosines to the class centres. Called on ``[embedding, labels]``.
    """

    def __init__(self, n_classes: int, kind: str = "arcface", scale: float = 64.0, margin: float = 0.5,
                 **kwargs):
        super().__init__(**kwargs)
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"head kind must be 'arcface' or 'cosface', got {kind!r}")
        self.n_classes, self.kind, self.scale, self.margin = int(n_classes), kind, float(scale), float(margin)

    def build(self, input_shape):
        dim = int(input_shape[0][-1])
        self.centres = self.add_weight(shape=(dim, self.n_classes), initializer="glorot_normal",
                                       name="centres")

    def cosines(self, embedding):
        e = embedding / ops.maximum(ops.norm(embedding, axis=-1, keepdims=True), 1e-12)
        w = self.centres / ops.maximum(ops.norm(self.centres, axis=0, keepdims=True), 1e-12)
        return ops.clip(ops.matmul(e, w), -1.0, 1.0)

    def call(self, inputs, training=False):
        embedding, labels = inputs
        cos = self.cosines(embedding)
        if not training or self.margin == 0:
            return self.scale * cos
        onehot = ops.one_hot(ops.reshape(ops.cast(labels, "int32"), (-1,)), self.n_classes, dtype=cos.dtype)
        if self.kind == "cosface":
            target = cos - self.margin
        else:
            m = self.margin
            sin = ops.sqrt(ops.maximum(1.0 - cos * cos, 0.0))
            with_margin = cos * math.cos(m) - sin * math.sin(m)
            # Past theta = pi - m, cos(theta + m) stops decreasing; fall back to a linear penalty there.
            target = ops.where(cos > math.cos(math.pi - m), with_margin, cos - m * math.sin(m))
        return self.scale * (cos + onehot * (target - cos))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.n_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "n_classes": self.n_classes, "kind": self.kind,
                "scale": self.scale, "margin": self.margin}
