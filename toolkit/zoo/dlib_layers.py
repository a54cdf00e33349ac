"""Keras layers for dlib's arithmetic; imported with the zoo so that saved ports load anywhere."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="faceprobe")
class DlibAddPrev(keras.layers.Layer):
    """dlib's ``add_prev``: the sum of two maps of possibly different sizes, each zero-padded at the end of
    every dimension (rows, columns, channels) to the larger size."""

    def call(self, inputs):
        a, b = inputs
        if tuple(a.shape[1:]) == tuple(b.shape[1:]):
            return a + b
        target = [max(int(x), int(y)) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

        def pad(t):
            return keras.ops.pad(t, [[0, 0]] + [[0, n - int(s)] for n, s in zip(target, t.shape[1:],
                                                                                  strict=True)])
        return pad(a) + pad(b)

    def compute_output_shape(self, input_shapes):
        a, b = input_shapes
        return (a[0],) + tuple(max(int(x), int(y)) for x, y in zip(a[1:], b[1:], strict=True))
