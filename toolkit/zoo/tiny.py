"""A tiny three-stage face CNN for fast tests and demos."""

from __future__ import annotations

import keras

from .blocks import Builder, finish


def tiny(input_size: int = 112, embedding_dim: int = 64, width: float = 1.0,
         activation: str = "relu") -> keras.Model:
    """Stem conv, then two depthwise-separable stages; one tap per stage."""

    def ch(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)

    inputs = keras.Input((input_size, input_size, 3), name="image")
    b = Builder(inputs, activation)
    b.conv(ch(16), 3, 2, tap=("stem/conv", "first"))
    b.conv(None, 3, 2, depthwise=True)
    b.conv(ch(32), 1, tap=("stage1/block1", "middle"))
    b.conv(None, 3, 2, depthwise=True)
    b.conv(ch(64), 1, tap=("stage2/block1", "last"))
    b.embedding_head(embedding_dim)
    return finish(b, inputs, "tiny")
