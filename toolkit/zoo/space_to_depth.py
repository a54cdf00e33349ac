"""Space-to-depth: a strided convolution on the image, recast as a stride-1 one over pixel blocks."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="faceprobe")
class SpaceToDepth(keras.layers.Layer):
    """Each ``block`` x ``block`` patch of pixels becomes one pixel of ``block**2`` times the channels,
    ordered (row in the block, column in the block, channel): TFLite's SPACE_TO_DEPTH."""

    def __init__(self, block: int, **kwargs):
        super().__init__(**kwargs)
        self.block = int(block)

    def call(self, x):
        import tensorflow as tf

        return tf.nn.space_to_depth(x, self.block)

    def compute_output_shape(self, input_shape):
        b = self.block
        n, h, w, c = input_shape
        return (n, None if h is None else h // b, None if w is None else w // b, c * b * b)

    def get_config(self) -> dict:
        return {**super().get_config(), "block": self.block}
