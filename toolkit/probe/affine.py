"""Which taps can carry a finding: a tap with no nonlinearity between the image and itself is an affine map
of the image (e.g. a stem conv + batch norm), so its gradient - and every ascent change at the method's
raw step - is the same for every start image: a fixed filter of the weights, not something the image
drives. The findings leave such a stage out and say why.
"""

from __future__ import annotations

import keras

from ..zoo import tap_layer_name

# Layers that are affine (or identity) in their input; anything else counts as a nonlinearity.
AFFINE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization,
          keras.layers.Dense, keras.layers.Add, keras.layers.InputLayer, keras.layers.ZeroPadding2D,
          keras.layers.Reshape, keras.layers.Flatten, keras.layers.AveragePooling2D,
          keras.layers.GlobalAveragePooling2D)


def _is_affine(layer) -> bool:
    from ..zoo import TapPoint

    return isinstance(layer, (*AFFINE, TapPoint))


def upstream_nonlinearities(model: keras.Model, tap: str) -> list[str]:
    """Names of the non-affine layers on any path from the input to ``tap``."""
    seen, found = set(), []
    stack = [model.get_layer(tap_layer_name(tap))]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if not _is_affine(layer):
            found.append(layer.name)
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                stack.append(t._keras_history.operation)
    return sorted(found)


def excluded_stages(model: keras.Model, taps: dict[str, str]) -> dict[str, str]:
    """Stage -> why it is left out of the findings, for the stages whose tap (``taps``: stage -> tap) is an
    affine map of the image."""
    return {stage: (f"tap {tap} is an affine map of the image (no nonlinearity before it): its ascent "
                    "change is the same for every start image")
            for stage, tap in taps.items() if not upstream_nonlinearities(model, tap)}
