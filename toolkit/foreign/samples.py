"""Float/quantized pairs made without faceprobe's exporter, as users bring them: a face CNN written as a
plain ``tf.Module`` (no Keras) converted by the TFLite converter, and any float file quantized by
ai-edge-quantizer. The benchmark and the tests check them as foreign pairs."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import tensorflow as tf


class PlainFaceNet(tf.Module):
    """A small MobileNet-like embedding CNN in raw TensorFlow ops: conv + leaky-ReLU stem, depthwise-separable
    blocks at strides 2, 4, 8 and 16, a residual add, global pooling and a 64-d embedding. Weights are
    He-initialised from ``seed`` (an untrained network: what is checked is quantization, not accuracy)."""

    def __init__(self, size: int = 64, width: int = 16, embedding: int = 64, seed: int = 0):
        super().__init__(name="plain_facenet")
        rng = np.random.default_rng(seed)
        self.size = size

        def var(shape, fan_in):
            return tf.Variable(rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))

        w = width
        self.stem = var((3, 3, 3, w), 27)
        self.stem_b = tf.Variable(np.zeros(w, np.float32))
        self.blocks = []
        for cin, cout in ((w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)):
            self.blocks.append((var((3, 3, cin, 1), 9), tf.Variable(np.zeros(cin, np.float32)),
                                var((1, 1, cin, cout), cin), tf.Variable(np.zeros(cout, np.float32))))
        self.head = var((4 * w, embedding), 4 * w)

    @tf.function(input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.float32, name="image")])
    def __call__(self, x):
        return {"embedding": self.embed(x)}

    def embed(self, x):
        """Embeddings of a batch of normalised images."""
        x = tf.nn.conv2d(x, self.stem, 2, "SAME") + self.stem_b
        x = tf.nn.leaky_relu(x, 0.25)  # its own op (LEAKY_RELU), not fused into the conv
        for k, (dw, dwb, pw, pwb) in enumerate(self.blocks):
            stride = 1 if k == 1 else 2
            y = tf.nn.relu(tf.nn.depthwise_conv2d(x, dw, [1, stride, stride, 1], "SAME") + dwb)
            y = tf.nn.conv2d(y, pw, 1, "SAME") + pwb
            x = tf.nn.relu(y + x if y.shape == x.shape else y)
        x = tf.reduce_mean(x, axis=[1, 2])
        return tf.matmul(x, self.head)


def train_module(module: PlainFaceNet, images: np.ndarray, labels: np.ndarray, epochs: int = 30,
                 seed: int = 0) -> float:
    """Train ``module`` in plain TensorFlow (GradientTape, no Keras): a normalised-softmax (cosine, scale
    16) classifier over the identities of normalised ``images``, Adam, horizontal flips; returns the last
    epoch's mean loss."""
    rng = np.random.default_rng(seed)
    classes = int(labels.max()) + 1
    emb = int(module.head.shape[1])
    weights = tf.Variable(rng.normal(0, 0.1, (emb, classes)).astype(np.float32))
    optimizer = tf.optimizers.Adam(3e-3)
    params = [*module.trainable_variables, weights]

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            e = tf.math.l2_normalize(module.embed(x), -1)
            logits = 16.0 * tf.matmul(e, tf.math.l2_normalize(weights, 0))
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, params), params, strict=True))
        return loss

    loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(images))
        losses = []
        for lo in range(0, len(order), 32):
            idx = order[lo:lo + 32]
            x = images[idx]
            flip = rng.random(len(idx)) < 0.5
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
            losses.append(float(step(tf.constant(x, tf.float32), tf.constant(labels[idx], tf.int32))))
        loss = float(np.mean(losses))
    return loss


def convert_module(module: PlainFaceNet, out: Path, variant: str = "float32",
                   calibration: np.ndarray | None = None, per_channel: bool = True) -> Path:
    """``module`` converted by the TFLite converter (through a SavedModel, as users do) to ``out``:
    float32, float16 or int8 (full integer, float I/O, calibrated on ``calibration``)."""
    saved = out.parent / f".saved_{out.stem}"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.__call__})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        images = np.asarray(calibration, np.float32)
        converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter._experimental_disable_per_channel = not per_channel
    out.write_bytes(converter.convert())
    return out


def edge_quantize(float_file: Path, out: Path, calibration: np.ndarray, per_tensor: bool = False) -> Path:
    """``float_file`` quantized to int8 (weights and activations) by ai-edge-quantizer from the float file
    alone, calibrated on normalised ``calibration`` images; ``per_tensor``: one weight scale per tensor
    instead of per channel (the known-bad recipe)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    manager = recipe_manager.RecipeManager()
    granularity = qtyping.QuantGranularity.TENSORWISE if per_tensor else qtyping.QuantGranularity.CHANNELWISE
    manager.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8, granularity)
    q = quantizer.Quantizer(str(float_file), manager.get_quantization_recipe())
    runner = Interpreter(model_path=str(float_file)).get_signature_runner()
    (key, signature), = Interpreter(model_path=str(float_file)).get_signature_list().items()
    (name,) = runner.get_input_details()
    data = {key: [{name: calibration[i:i + 1].astype(np.float32)} for i in range(len(calibration))]}
    # The quantizer prints its own summary and progress; this is a tool's step, not the user's console.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = q.quantize(q.calibrate(data, num_threads=1))
    out.write_bytes(bytes(result.quantized_model))
    return out
