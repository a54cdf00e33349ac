"""A zoo of compact face CNNs, each declaring its taps; a registry by name."""

from __future__ import annotations

from collections.abc import Callable

import keras

from .blocks import pooled_embedding
from .dlib_layers import DlibAddPrev
from .indexed_add import IndexedAdd
from .mobilefacenet import mobilefacenet
from .space_to_depth import SpaceToDepth
from .taps import (
    STAGES,
    TapPoint,
    TapSpec,
    get_tap,
    list_taps,
    stage_taps,
    tap_key,
    tap_layer_name,
    tap_model,
)
from .tiny import tiny

REGISTRY: dict[str, Callable[..., keras.Model]] = {"mobilefacenet": mobilefacenet, "tiny": tiny}


def available_models() -> list[str]:
    return sorted(REGISTRY)


def get_model(name: str, **options) -> keras.Model:
    """Build a zoo model by name (options: input_size, embedding_dim, width, activation)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    if options.get("activation") == "prelu":
        import warnings

        warnings.warn("PReLU: LiteRT's XNNPACK does not run int8 PReLU, so int8 exports run ~14x "
                      "slower than float; prefer relu for boards", stacklevel=2)
    return REGISTRY[name](**options)


__all__ = ["STAGES", "DlibAddPrev", "IndexedAdd", "SpaceToDepth", "TapPoint", "TapSpec", "available_models",
           "get_model", "get_tap", "list_taps", "pooled_embedding", "stage_taps", "tap_key", "tap_layer_name",
           "tap_model"]
