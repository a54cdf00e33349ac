"""Taps: named pre-activation tensors (after batch norm, before ReLU/PReLU) that every zoo model declares."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras

STAGES = ("first", "middle", "last")


@dataclass(frozen=True)
class TapSpec:
    """One tap: a conv block's pre-activation output."""

    name: str  # stable, e.g. "stage2/block1"
    stage: str  # "first", "middle" or "last"
    channels: int
    stride: int  # total stride from the input, in pixels
    receptive_field: int  # in input pixels

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def layer_name(self) -> str:
        return tap_layer_name(self.name)


def tap_layer_name(tap: str) -> str:
    """Keras layer name of a tap (Keras forbids '/' in layer names)."""
    return "tap__" + tap.replace("/", "__")


def tap_key(tap: str) -> str:
    """Output key of a tap in tap models and TFLite signatures."""
    return tap.replace("/", "__")


@keras.saving.register_keras_serializable(package="faceprobe")
class TapPoint(keras.layers.Layer):
    """Identity layer that marks a tap and carries its metadata through `.keras` save/load."""

    def __init__(self, tap: dict, **kwargs):
        kwargs.setdefault("name", tap_layer_name(tap["name"]))
        super().__init__(**kwargs)
        self.tap = TapSpec(**tap)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "tap": self.tap.to_dict()}


def list_taps(model: keras.Model) -> list[TapSpec]:
    """The model's taps in depth order."""
    return [layer.tap for layer in model.layers if isinstance(layer, TapPoint)]


def get_tap(model: keras.Model, name: str) -> TapSpec:
    """One tap by name; a clear error lists the valid names."""
    taps = {t.name: t for t in list_taps(model)}
    if name not in taps:
        raise KeyError(f"unknown tap {name!r}; this model's taps are: {', '.join(taps) or '(none)'}")
    return taps[name]


def stage_taps(model: keras.Model) -> dict[str, TapSpec]:
    """The representative tap of each stage: the deepest tap declared for it."""
    chosen: dict[str, TapSpec] = {}
    for tap in list_taps(model):
        chosen[tap.stage] = tap
    return {s: chosen[s] for s in STAGES if s in chosen}


def tap_model(model: keras.Model, taps: list[str] | None = None, embedding: bool = True) -> keras.Model:
    """A model with the same weights whose outputs are a dict: tap keys (and ``embedding``).

    Converting this model keeps the pre-activation tensors alive as named outputs.
    """
    names = [t.name for t in list_taps(model)] if taps is None else list(taps)
    outputs = {}
    for name in names:
        get_tap(model, name)
        outputs[tap_key(name)] = model.get_layer(tap_layer_name(name)).output
    if embedding:
        outputs["embedding"] = model.output
    return keras.Model(model.input, outputs, name=f"{model.name}_taps")
