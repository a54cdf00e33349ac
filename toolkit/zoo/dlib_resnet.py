"""dlib's pretrained face ResNet (``dlib_face_recognition_resnet_model_v1``), rebuilt in Keras from its
weights.

The network, as dlib's ``dnn_face_recognition_ex.cpp`` declares it: a 7x7/2 conv and a 3x3/2 max pool, then
residual blocks of two 3x3 convs (each followed by an ``affine`` layer, dlib's frozen batch norm) at
32, 64, 128, 256 and 256 channels, a global average pool and a 128-d linear layer without bias. Three
details of dlib's arithmetic are reproduced exactly:

- input: (pixel - mean) / 256 with per-channel RGB means. The model file takes faceprobe's normalisation
  ((pixel - 127.5) / 128); the change of scale and offset is folded into the first conv, which is exact
  because that conv has no padding.
- stride-2 convs and pools have no padding; stride-1 convs pad by half the kernel.
- ``add_prev`` of two tensors of different sizes (a downsampling block: from 8x8, the conv path gives 3x3,
  the pool path 4x4; and 64 vs 128 channels) has the larger size in every dimension and adds each input
  where it fits, zeros elsewhere (`DlibAddPrev`).

Each ``affine`` is folded into the conv before it. Taps are the inputs of the 29 ReLUs: the stem, the first
conv of each block (``.../conv1``) and each block's sum before its ReLU (``.../sum``).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from ..data.dlib_models import packaged_model_file
from ..data.normalize import DEFAULT_NORMALIZATION
from .dlib_format import DlibFormatError, DlibLayer, DlibNet, read_network
from .dlib_layers import DlibAddPrev
from .stages import assign_stages
from .taps import TapPoint, TapSpec

NAME = "dlib_resnet"
# (channels, blocks, first block downsamples) from the input side: dlib's alevel4 .. alevel0.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def weights_path() -> Path:
    """The ResNet's weights file shipped by the ``face-recognition-models`` package."""
    return packaged_model_file("dlib_face_recognition_resnet_model_v1.dat")


def architecture() -> list:
    """dlib's network type as a token list, innermost first: layer kinds, ("tag", id), ("skip", id),
    ("add_prev", id) and ("relu", tap name)."""
    tokens: list = ["con", "affine", ("relu", "stem"), "max_pool"]
    for level, (_, blocks, down) in enumerate(LEVELS, start=1):
        for block in range(1, blocks + 1):
            name = f"level{level}/block{block}"
            tokens += [("tag", 1), "con", "affine", ("relu", f"{name}/conv1"), "con", "affine"]
            if down and block == 1:  # residual_down: the skip path is a 2x2/2 average pool of the input
                tokens += [("tag", 2), ("skip", 1), "avg_pool", ("add_prev", 2)]
            else:
                tokens += [("add_prev", 1)]
            tokens.append(("relu", f"{name}/sum"))
    return tokens + ["avg_pool", "fc"]


def _kind(token) -> str:
    kind = token[0] if isinstance(token, tuple) else token
    return "marker" if kind in ("tag", "skip") else kind


def _validate_structure(net: DlibNet) -> None:
    expected = [_kind(t) for t in architecture()]
    found = [item.kind for item in net.chain]
    if found != expected:
        at = next((i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b),
                  min(len(found), len(expected)))
        raise DlibFormatError(f"the network is not dlib's face ResNet v1: layer {at} is "
                              f"{found[at] if at < len(found) else 'missing'}, expected "
                              f"{expected[at] if at < len(expected) else 'nothing'}")


class _State:
    """The current tensor with its channels, total stride and receptive field."""

    def __init__(self, x, stride: int = 1, rf: int = 1):
        self.x, self.stride, self.rf = x, stride, rf

    @property
    def channels(self) -> int:
        return int(self.x.shape[-1])


def _folded_conv(con: DlibLayer, affine: DlibLayer,
                 input_norm: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """Keras kernel (kh, kw, in, out) and bias of dlib's conv followed by its affine layer."""
    kernel = np.transpose(con.arrays["filters"], (2, 3, 1, 0)).astype(np.float64)
    bias = con.arrays["biases"].astype(np.float64)
    if input_norm is not None:
        # dlib input d = (p - mean) / 256; faceprobe input x = (p - 127.5) / 128, so d = a * x + c.
        a, c = input_norm
        bias = bias + np.einsum("hwio,i->o", kernel, c)
        kernel = kernel * a
    gamma, beta = affine.arrays["gamma"].astype(np.float64), affine.arrays["beta"].astype(np.float64)
    return (kernel * gamma).astype(np.float32), (bias * gamma + beta).astype(np.float32)


def _padding(layer: DlibLayer, window: tuple[int, int]) -> str:
    stride, pad = layer.settings["stride"], layer.settings["padding"]
    if pad == (0, 0):
        return "valid"
    if stride == (1, 1) and pad == (window[0] // 2, window[1] // 2) and window[0] % 2 and window[1] % 2:
        return "same"
    raise DlibFormatError(f"{layer.version} with padding {pad}, stride {stride} and window {window} has no "
                          "Keras equivalent here")


def _build(net: DlibNet, stages: dict[str, str] | None) -> tuple[keras.Model, list[TapSpec], list]:
    """Interpret the decoded chain with dlib's semantics. Returns the model, its tap specs (stage "middle"
    when ``stages`` is None) and (layer, weights) pairs to load once the model exists."""
    size = net.input.settings["size"]
    n = DEFAULT_NORMALIZATION
    mean = np.asarray(net.input.settings["mean_rgb"], np.float64)
    input_norm = (n["scale"] / 256.0, (n["mean"] - mean) / 256.0)
    image = keras.Input((size[0], size[1], 3), name="image")
    state, tags = _State(image), {}
    taps: list[TapSpec] = []
    weights: list = []
    chain, tokens = net.chain, architecture()
    i = 0
    while i < len(chain):
        layer, token = chain[i], tokens[i]
        kind = _kind(token)
        if kind == "marker":
            if token[0] == "tag":
                tags[token[1]] = state
            else:
                state = tags[token[1]]
        elif kind == "con":
            affine = chain[i + 1]
            window = layer.settings["kernel"]
            conv = layers.Conv2D(layer.settings["filters"], window, layer.settings["stride"],
                                 padding=_padding(layer, window), name=f"conv_{len(weights) + 1}")
            weights.append((conv, _folded_conv(layer, affine, input_norm)))
            input_norm = None
            stride = layer.settings["stride"][0]
            state = _State(conv(state.x), state.stride * stride, state.rf + (window[0] - 1) * state.stride)
            i += 1  # the affine layer is folded into this conv
        elif kind == "relu":
            spec = TapSpec(token[1], (stages or {}).get(token[1], "middle"), state.channels, state.stride,
                           min(state.rf, size[0]))
            taps.append(spec)
            x = TapPoint(spec.to_dict())(state.x)
            state = _State(layers.ReLU(name=f"relu_{len(taps)}")(x), state.stride, state.rf)
        elif kind in ("max_pool", "avg_pool"):
            window = layer.settings["window"]
            if window == (0, 0):  # dlib's avg_pool_everything
                x = layers.GlobalAveragePooling2D(name="global_pool")(state.x)
                state = _State(x, state.stride, size[0])
            else:
                pool = layers.MaxPooling2D if kind == "max_pool" else layers.AveragePooling2D
                stride = layer.settings["stride"][0]
                x = pool(window, layer.settings["stride"], padding=_padding(layer, window))(state.x)
                state = _State(x, state.stride * stride, state.rf + (window[0] - 1) * state.stride)
        elif kind == "add_prev":
            prev = tags[token[1]]
            # Block k's sum follows 2k taps: the stem's, then conv1 of blocks 1..k and the sums of 1..k-1.
            x = DlibAddPrev(name=f"add_prev_{len(taps) // 2}")([state.x, prev.x])
            state = _State(x, max(state.stride, prev.stride), max(state.rf, prev.rf))
        elif kind == "fc":
            dense = layers.Dense(layer.settings["outputs"], use_bias=False, name="embedding")
            weights.append((dense, (layer.arrays["weights"],)))
            state = _State(dense(state.x), state.stride, state.rf)
        else:
            raise DlibFormatError(f"unexpected layer {kind} at position {i}")
        i += 1
    return keras.Model(image, state.x, name=NAME), taps, weights


def dlib_resnet(path: str | Path | None = None) -> tuple[keras.Model, dict]:
    """dlib's face ResNet with its weights and taps, and what a model file records about its origin;
    ``path`` defaults to the weights the face-recognition-models package installed."""
    path = Path(path or weights_path())
    net = read_network(path)
    _validate_structure(net)
    _, draft, _ = _build(net, None)
    stages = dict(zip((t.name for t in draft), assign_stages([t.stride for t in draft]), strict=True))
    model, _, weights = _build(net, stages)
    for layer, values in weights:
        layer.set_weights(list(values))
    origin = {"source": "dlib", "weights": path.name, "dlib_params": net.params,
              "dlib_input": {"mean_rgb": net.input.settings["mean_rgb"], "scale": 256.0}}
    return model, origin
