"""The stem as space-to-depth: a strided convolution on the input image, rewritten exactly as SPACE_TO_DEPTH
and a stride-1 convolution over pixel blocks. XNNPACK's int8 kernels run dlib's 7x7/2 stem on 3 channels
in about the time of the rest of the network; the rewritten stem takes under half of that
(`scripts/bench/derive.py` times both)."""

from __future__ import annotations

import keras
import numpy as np

from ..zoo.space_to_depth import SpaceToDepth


def _rewritable(layer) -> bool:
    if type(layer) is not keras.layers.Conv2D:  # not a depthwise or separable conv
        return False
    cfg = layer.get_config()
    s, k = tuple(cfg["strides"]), tuple(cfg["kernel_size"])
    return (s[0] == s[1] > 1 and k[0] > s[0] and k[1] > s[1] and tuple(cfg["dilation_rate"]) == (1, 1)
            and cfg.get("groups", 1) == 1 and cfg["data_format"] == "channels_last")


def _image(model: keras.Model):
    return keras.Input(tuple(model.input_shape[1:]), dtype=model.input.dtype, name=model.input.name)


def stem_conv(model: keras.Model) -> keras.layers.Conv2D | None:
    """The strided convolution that reads the model's input image directly, if it has one (kernel larger
    than its stride, no dilation or groups); None otherwise."""
    image, found = _image(model), []

    def call(op, *args, **kwargs):
        if args and args[0] is image and _rewritable(op):
            found.append(op)
        return op(*args, **kwargs)

    model._run_through_graph(image, call_fn=call)
    return found[0] if len(found) == 1 else None


def _edges(size: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """(pad before, pad after — negative: crop —, output size) along one axis of the image."""
    if padding == "valid":
        out, before = (size - k) // s + 1, 0
    else:  # "same", as TensorFlow pads: the odd pixel after
        out = -(-size // s)
        before = max((out - 1) * s + k - size, 0) // 2
    extent = s * (out - 1 + -(-k // s))  # the pixels the stride-1 conv over blocks reads
    return before, extent - before - size, out


def block_kernel(kernel: np.ndarray, s: int) -> np.ndarray:
    """A (kh, kw, C, F) kernel of stride ``s`` as the (ceil(kh/s), ceil(kw/s), s*s*C, F) kernel of a
    stride-1 conv over space-to-depth blocks, zero where the block reaches past the original kernel."""
    kh, kw, c, f = kernel.shape
    bh, bw = -(-kh // s), -(-kw // s)
    padded = np.zeros((bh * s, bw * s, c, f), kernel.dtype)
    padded[:kh, :kw] = kernel
    # (a, di, b, dj, c, f) -> (a, b, di, dj, c, f): SPACE_TO_DEPTH orders depth as (di, dj, c).
    return padded.reshape(bh, s, bw, s, c, f).transpose(0, 2, 1, 3, 4, 5).reshape(bh, bw, s * s * c, f)


def space_to_depth_stem(model: keras.Model) -> keras.Model:
    """``model`` with its stem convolution (see `stem_conv`) computed as SPACE_TO_DEPTH and a stride-1
    convolution: the same function (the new kernel's extra taps are zero), every other layer shared.
    A model without such a stem is returned as it is."""
    conv = stem_conv(model)
    if conv is None:
        return model
    cfg = conv.get_config()
    s, (kh, kw), padding = cfg["strides"][0], cfg["kernel_size"], cfg["padding"]
    h, w = (int(d) for d in model.input_shape[1:3])
    top, bottom, _ = _edges(h, kh, s, padding)
    left, right, _ = _edges(w, kw, s, padding)
    weights = conv.get_weights()
    kernel = block_kernel(weights[0], s)
    new_conv = keras.layers.Conv2D.from_config(
        {**cfg, "kernel_size": kernel.shape[:2], "strides": (1, 1), "padding": "valid"})

    def stem(x):
        if bottom < 0 or right < 0:
            x = keras.layers.Cropping2D(((0, max(-bottom, 0)), (0, max(-right, 0))),
                                        name=f"{conv.name}_crop")(x)
        if top or left or bottom > 0 or right > 0:
            x = keras.layers.ZeroPadding2D(((top, max(bottom, 0)), (left, max(right, 0))),
                                           name=f"{conv.name}_pad")(x)
        return new_conv(SpaceToDepth(s, name=f"{conv.name}_space_to_depth")(x))

    def call(op, *args, **kwargs):
        return stem(args[0]) if op is conv else op(*args, **kwargs)

    image = _image(model)
    outputs = model._run_through_graph(image, call_fn=call)
    rewritten = keras.Model(image, outputs, name=model.name)
    new_conv.set_weights([kernel, *weights[1:]])
    # Rebuilt from its config: layers of its own, not shared with ``model`` (a shared layer's `.output`,
    # which tap models read, would be ``model``'s).
    fresh = keras.Model.from_config(rewritten.get_config())
    fresh.set_weights(rewritten.get_weights())
    return fresh


def shipped_stem(model: keras.Model, mode: str) -> keras.Model:
    """``model`` with the stem a derive recipe asks for: ``space_to_depth`` rewrites it (see
    `space_to_depth_stem`), ``conv`` leaves it, ``auto`` rewrites kernels of at least twice the stride plus
    one, where the int8 kernels gain (dlib's 7x7/2) and not the small ones, where they do not (3x3/2)."""
    conv = stem_conv(model)
    if conv is None or mode == "conv":
        return model
    k, s = min(conv.get_config()["kernel_size"]), conv.get_config()["strides"][0]
    return space_to_depth_stem(model) if mode == "space_to_depth" or k >= 2 * s + 1 else model
