"""Building blocks shared by the zoo, tracking stride and receptive field so taps can declare them."""

from __future__ import annotations

import keras
from keras import layers

from .taps import TapPoint, TapSpec

ACTIVATIONS = ("relu", "prelu")
POOLED = "pooled"


class Builder:
    """Functional-model builder that knows the total stride and receptive field of its current tensor."""

    def __init__(self, x, activation: str = "relu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.x = x
        self.activation = activation
        self.stride = 1
        self.rf = 1
        self.taps: list[TapSpec] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _grow(self, kernel: int, stride: int) -> None:
        self.rf += (kernel - 1) * self.stride
        self.stride *= stride

    def conv(
        self,
        filters: int | None,
        kernel: int,
        stride: int = 1,
        depthwise: bool = False,
        act: bool = True,
        tap: tuple[str, str] | None = None,
        padding: str = "same",
    ) -> None:
        """Conv (or depthwise conv) + batch norm [+ tap] [+ activation].

        ``tap`` is (name, stage): the batch-norm output, before the activation, becomes that tap.
        """
        if depthwise:
            conv = layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False,
                                          name=self._name("dwconv"))
        else:
            conv = layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False,
                                 name=self._name("conv"))
        x = conv(self.x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=self._name("bn"))(x)
        self._grow(kernel, stride)
        if tap is not None:
            spec = TapSpec(tap[0], tap[1], int(x.shape[-1]), self.stride, self.rf)
            x = TapPoint(spec.to_dict())(x)
            self.taps.append(spec)
        if act:
            if self.activation == "relu":
                x = layers.ReLU(name=self._name("relu"))(x)
            else:
                x = layers.PReLU(shared_axes=[1, 2], name=self._name("prelu"))(x)
        self.x = x

    def bottleneck(self, out: int, stride: int, expansion: int, tap: tuple[str, str]) -> None:
        """Inverted residual: 1x1 expand, 3x3 depthwise (the tap), 1x1 linear projection."""
        inp, cin = self.x, int(self.x.shape[-1])
        self.conv(cin * expansion, 1)
        self.conv(None, 3, stride, depthwise=True, tap=tap)
        self.conv(out, 1, act=False)
        if stride == 1 and cin == out:
            self.x = layers.Add(name=self._name("add"))([inp, self.x])

    def embedding_head(self, dim: int) -> None:
        """Global depthwise conv over the whole map (its output is the ``pooled`` layer), then a linear 1x1
        to the embedding."""
        k = int(self.x.shape[1])
        self.conv(None, k, depthwise=True, act=False, padding="valid")
        self.x = layers.Identity(name=POOLED)(self.x)
        self.conv(dim, 1, act=False)
        self.x = layers.Flatten(name="embedding")(self.x)


def finish(builder: Builder, inputs, name: str) -> keras.Model:
    return keras.Model(inputs, builder.x, name=name)


def pooled_embedding(model: keras.Model) -> keras.Model:
    """The same network with the global depthwise conv's output (before the last linear layer) as the
    embedding. With few training identities that layer generalises better to new people: the linear
    layer is fitted to the training identities (measured on ORL people held out from training)."""
    flat = layers.Flatten(name="embedding")(model.get_layer(POOLED).output)
    return keras.Model(model.input, flat, name=model.name)
