"""The one layer a pruned student needs beyond the teacher's: a sum whose inputs land on chosen channels."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="faceprobe")
class IndexedAdd(keras.layers.Layer):
    """Sum of maps whose channels are gathered into the output's channels.

    ``index[k][c]`` is the channel of input ``k`` added into output channel ``c``, or -1 for none. Maps of
    different sizes are zero-padded at the end of rows and columns to the larger size, as dlib's
    ``add_prev`` does; a pruned dlib downsampling block adds its skip path's kept channels where they land.
    """

    def __init__(self, index: list[list[int]], **kwargs):
        super().__init__(**kwargs)
        self.index = [[int(c) for c in row] for row in index]

    def _gather(self, x, row: list[int]):
        n = int(x.shape[-1])
        if row == list(range(n)):
            return x
        # The zero channel at position n stands for "nothing lands here". A pad, not a concatenation with
        # zeros_like: the converter keeps a pad and a gather in int8, where zeros_like leaves a float island.
        padded = keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, 1]])
        return keras.ops.take(padded, [n if c < 0 else c for c in row], axis=-1)

    def call(self, inputs):
        maps = [self._gather(x, row) for x, row in zip(inputs, self.index, strict=True)]
        rows = max(int(m.shape[1]) for m in maps)
        cols = max(int(m.shape[2]) for m in maps)
        total = None
        for m in maps:
            dr, dc = rows - int(m.shape[1]), cols - int(m.shape[2])
            if dr or dc:
                m = keras.ops.pad(m, [[0, 0], [0, dr], [0, dc], [0, 0]])
            total = m if total is None else total + m
        return total

    def compute_output_shape(self, input_shapes):
        rows = max(int(s[1]) for s in input_shapes)
        cols = max(int(s[2]) for s in input_shapes)
        return (input_shapes[0][0], rows, cols, len(self.index[0]))

    def get_config(self) -> dict:
        return {**super().get_config(), "index": self.index}
