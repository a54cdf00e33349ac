"""Keras model -> SavedModel -> TFLite bytes, one variant at a time.

Conversion goes through ``model.export`` and ``TFLiteConverter.from_saved_model`` with a dynamic
batch: ``from_concrete_functions`` converts without error but yields NaN outputs (unfrozen variables).
Full-integer int8 calibrates first and quantizes second, so that selected blocks can stay in float
(the quantizer's denylisted nodes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tflite_convert

from ..params import ParameterError
from ..zoo import get_tap, tap_key, tap_layer_name
from .ranges import percentile_ranges
from .recipe import VARIANTS, Recipe, as_recipe


def validate_recipes(items: Sequence[str | Recipe]) -> list[Recipe]:
    """Recipes (a bare variant name is its default recipe), one per variant, in the given order."""
    out: dict[str, Recipe] = {}
    for item in items:
        recipe = as_recipe(item)
        if recipe.variant in out and out[recipe.variant] != recipe:
            raise ValueError(f"two different recipes for the {recipe.variant} variant; export them into "
                             "separate folders")
        out[recipe.variant] = recipe
    if not out:
        raise ValueError(f"no variants given; choose from {', '.join(VARIANTS)}")
    return list(out.values())


def export_saved_model(model: keras.Model, directory: Path) -> Path:
    """Write ``model`` as a SavedModel whose serving signature has a dynamic batch."""
    model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


def block_layers(model: keras.Model, tap: str) -> list[str]:
    """Layer names of the block behind a tap: its conv, its batch norm and the activation after it."""
    get_tap(model, tap)
    point = model.get_layer(tap_layer_name(tap))
    bn = point.input._keras_history.operation
    conv = bn.input._keras_history.operation
    names = [conv.name, bn.name]
    for layer in model.layers:
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        if any(t is point.output for t in inputs):
            names.append(layer.name)
    return names


def float_nodes(tensor_names: Sequence[str], layers: Sequence[str],
                output_names: Sequence[str] = ()) -> list[str]:
    """The converted graph's tensors produced by ``layers`` (plus ``output_names``): the quantizer's denylist.

    Converted tensor names join fused ops' names with ';' and Keras scopes layers as
    ``<model>/<layer>[_k]/...``.
    """
    patterns = [re.compile(r"(^|/)" + re.escape(name) + r"(_\d+)?/") for name in layers]
    picked = []
    for name in tensor_names:
        parts = name.split(";")
        if name in output_names or any(p.search(part) for p in patterns for part in parts):
            picked.append(name)
    return picked


def representative(images: np.ndarray) -> Callable:
    """The converter's representative dataset: one normalised image per sample."""

    def gen():
        for i in range(len(images)):
            yield [images[i:i + 1].astype(np.float32)]

    return gen


def int8_converter(saved_model_dir: Path, calibration: np.ndarray,
                   ops: tf.lite.OpsSet = tf.lite.OpsSet.TFLITE_BUILTINS_INT8) -> tf.lite.TFLiteConverter:
    """A converter set up for full-integer quantization calibrated on ``calibration`` (normalised float
    images); ``ops`` picks int8 or int16x8 activations."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(calibration)
    converter.target_spec.supported_ops = [ops]
    return converter


def convert(
    saved_model_dir: Path,
    recipe: Recipe,
    calibration: np.ndarray | None = None,
    denylist: Callable[[bytes], list[str]] | None = None,
) -> tuple[bytes, dict]:
    """Convert one SavedModel by ``recipe``; returns (tflite bytes, converter options for the manifest).

    ``calibration``: normalised float images (int8, int16x8). ``denylist`` maps the calibrated model to
    the tensor names to keep in float (int8 only).
    """
    variant = recipe.variant
    options: dict = {"variant": variant}
    if not recipe.calibrated:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
        if variant != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert(), options
    if calibration is None or len(calibration) == 0:
        raise ParameterError("calibration", f"{variant} needs calibration images: pass a folder of training "
                                            "faces ({name})")
    options.update(calibration_images=int(len(calibration)), range_rule=recipe.calibration.range_rule,
                   per_channel=recipe.per_channel)
    if variant == "int16x8":
        # LiteRT's 16x8 mode goes through the older quantizer: the MLIR one gives int16 tensors a
        # non-zero zero point, which the int16 conv kernels refuse.
        ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        converter = int8_converter(saved_model_dir, calibration, ops)
        converter._experimental_disable_per_channel = not recipe.per_channel
        if recipe.calibration.range_rule != "minmax":
            raise ValueError("calibration.range_rule: int16x8 takes the converter's own min/max ranges; "
                             "set range_rule = \"minmax\"")
        return converter.convert(), options
    converter = int8_converter(saved_model_dir, calibration)
    converter._experimental_calibrate_only = True  # quantize below, with the ranges and the denylist
    calibrated = converter.convert()
    if recipe.calibration.range_rule == "percentile":
        calibrated = percentile_ranges(calibrated, calibration, recipe.calibration.percentile)
    nodes = denylist(calibrated) if denylist else []
    io_type = tf.int8 if recipe.int8_io else tf.float32
    quantized = tflite_convert.mlir_quantize(
        calibrated,
        disable_per_channel=not recipe.per_channel,
        fully_quantize=recipe.int8_io,
        input_data_type=io_type,
        output_data_type=io_type,
        denylisted_ops=list(recipe.float_ops) or None,
        denylisted_nodes=nodes or None,
    )
    options.update(int8_io=recipe.int8_io, float_nodes=nodes, float_ops=list(recipe.float_ops))
    return quantized, options


def keep_float_denylist(model: keras.Model, taps: Sequence[str]) -> Callable[[bytes], list[str]] | None:
    """A denylist function for ``convert`` that keeps the blocks behind ``taps`` in float."""
    if not taps:
        return None
    layers = [name for tap in taps for name in block_layers(model, tap)]
    keys = {tap_key(t) for t in taps}

    def denylist(calibrated: bytes) -> list[str]:
        from .graph import output_tensor_names, tensor_names

        outputs = [n for k, n in output_tensor_names(calibrated).items() if k in keys]
        nodes = float_nodes(tensor_names(calibrated), layers, outputs)
        if not nodes:
            raise RuntimeError(f"keep-float found no tensors of {', '.join(taps)} in the converted graph")
        return nodes

    return denylist
