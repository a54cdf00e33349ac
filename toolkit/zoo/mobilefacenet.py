"""MobileFaceNet-class model: depthwise-separable bottlenecks, global depthwise conv, 128-d embedding."""

from __future__ import annotations

import keras

from .blocks import Builder, finish

# (expansion, out channels, repeats, first stride, tap stage) per bottleneck stage.
STAGES = (
    (2, 64, 5, 2, "middle"),
    (4, 128, 1, 2, "middle"),
    (2, 128, 6, 1, "middle"),
    (4, 128, 1, 2, "last"),
    (2, 128, 2, 1, "last"),
)


def mobilefacenet(
    input_size: int = 112,
    embedding_dim: int = 128,
    width: float = 1.0,
    activation: str = "relu",
) -> keras.Model:
    """MobileFaceNet at ``width`` (about 1.0 M parameters at width 1.0, 112x112 input)."""

    def ch(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)

    inputs = keras.Input((input_size, input_size, 3), name="image")
    b = Builder(inputs, activation)
    b.conv(ch(64), 3, 2, tap=("stem/conv", "first"))
    b.conv(None, 3, depthwise=True, tap=("stem/dw", "first"))
    block = 0
    stage_index = 1
    for i, (t, c, n, s, stage) in enumerate(STAGES):
        # Stride-1 continuation stages share the number of the stage they continue.
        if i > 0 and s == 2:
            stage_index += 1
            block = 0
        for r in range(n):
            block += 1
            b.bottleneck(ch(c), s if r == 0 else 1, t, tap=(f"stage{stage_index}/block{block}", stage))
    b.conv(ch(512), 1, tap=("head/conv", "last"))
    b.embedding_head(embedding_dim)
    return finish(b, inputs, "mobilefacenet")
