"""Reader for dlib's DNN serialization format (``dlib::serialize(net)``), in Python + numpy.

The format, as dlib's serialize.h, dnn/core.h and dnn/layers.h define it:

- integer: a control byte whose low 4 bits count the little-endian magnitude bytes that follow, bit 0x80
  marking a negative number; bool: the character '1' or '0'; string: an integer length, then the bytes;
  float: two integers (mantissa m, exponent e) meaning m * 2**e.
- tensor: integer version 2, four integer dimensions (n, k, nr, nc), then raw little-endian float32;
  alias tensor (a view into a layer's parameter tensor): integer version 1 and four dimensions.
- network: the loss layer (version, details), then every wrapper's header from the outermost layer inwards
  (``add_layer``: version 2; ``add_tag_layer``/``add_skip_layer``: version 1), then the input layer, then
  each ``add_layer``'s details and training state from the innermost layer outwards.

Tags and skips carry no id in the file; which is which comes from the network's type (see dlib_resnet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DlibFormatError(ValueError):
    """The bytes are not a dlib network this reader understands."""


@dataclass
class DlibLayer:
    """One decoded layer: its dlib type name (``con``, ``affine``, ``relu``, ...), settings and arrays."""

    kind: str
    version: str
    settings: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))


@dataclass
class DlibNet:
    """A decoded network: the input layer, the chain innermost first (``marker`` entries stand for tag and
    skip wrappers) and the loss layer."""

    input: DlibLayer
    chain: list[DlibLayer]
    loss: DlibLayer

    @property
    def layers(self) -> list[DlibLayer]:
        return [item for item in self.chain if item.kind != "marker"]

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"file ends inside a value at byte {self.pos} (needs {n} more bytes)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            raise DlibFormatError(f"bad integer control byte 0x{control:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if control & 0x80 else value

    def peek_int(self) -> int:
        pos = self.pos
        value = self.int()
        self.pos = pos
        return value

    def bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        n = self.int()
        if n < 0 or n > 1 << 16:
            raise DlibFormatError(f"bad string length {n} at byte {self.pos}")
        return self._take(n).decode("latin-1")

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.pos}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), "<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"alias tensor version {version} at byte {self.pos}, expected 1")
        return tuple(self.int() for _ in range(4))


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Consecutive views of a flat parameter tensor, as dlib's alias tensors lay them out."""
    flat, out, offset = params.reshape(-1), [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[offset:offset + n].reshape(shape))
        offset += n
    if offset != flat.size:
        raise DlibFormatError(f"parameter tensor holds {flat.size} values, its views cover {offset}")
    return out


def _training_multipliers(r: _Reader) -> None:
    for _ in range(4):  # learning-rate and weight-decay multipliers: training state only
        r.float()


def _con(r: _Reader, version: str) -> DlibLayer:
    params = r.tensor()
    filters_n, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
    filters_shape, bias_shape = r.alias(), r.alias()
    _training_multipliers(r)
    use_bias = r.bool() if version in ("con_5", "con_6") else True
    if version == "con_6":
        r.bool()  # use_relu: a fused-activation flag dlib sets only at inference time
    filters, biases = _split(params, filters_shape, bias_shape)
    return DlibLayer("con", version, {"filters": filters_n, "kernel": (nr, nc), "stride": (sy, sx),
                                      "padding": (py, px), "use_bias": use_bias},
                     {"filters": filters, "biases": biases.reshape(-1)})


def _affine(r: _Reader, version: str) -> DlibLayer:
    params = r.tensor()
    gamma_shape, beta_shape = r.alias(), r.alias()
    mode = r.int()
    disabled = r.bool() if version == "affine_2" else False
    gamma, beta = _split(params, gamma_shape, beta_shape)
    return DlibLayer("affine", version, {"mode": mode, "disabled": disabled},
                     {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1)})


def _relu(r: _Reader, version: str) -> DlibLayer:
    return DlibLayer("relu", version, {"disabled": r.bool() if version == "relu_2" else False})


def _pool(kind: str):
    def read(r: _Reader, version: str) -> DlibLayer:
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return DlibLayer(kind, version, {"window": (nr, nc), "stride": (sy, sx), "padding": (py, px)})
    return read


def _add_prev(r: _Reader, version: str) -> DlibLayer:
    return DlibLayer("add_prev", version)


def _fc(r: _Reader, version: str) -> DlibLayer:
    outputs, inputs = r.int(), r.int()
    params = r.tensor()
    weights_shape, bias_shape = r.alias(), r.alias()
    bias_mode = r.int()
    _training_multipliers(r)
    use_bias = r.bool() if version == "fc_3" else True
    shapes = [weights_shape] + ([bias_shape] if int(np.prod(bias_shape)) else [])
    parts = _split(params, *shapes)
    arrays = {"weights": parts[0].reshape(inputs, outputs)}
    if len(parts) > 1:
        arrays["biases"] = parts[1].reshape(-1)
    return DlibLayer("fc", version, {"outputs": outputs, "inputs": inputs, "bias_mode": bias_mode,
                                     "use_bias": use_bias and len(parts) > 1}, arrays)


_LAYERS = {
    "con_4": _con, "con_5": _con, "con_6": _con,
    "affine_": _affine, "affine_2": _affine,
    "relu_": _relu, "relu_2": _relu,
    "max_pool_2": _pool("max_pool"), "avg_pool_2": _pool("avg_pool"),
    "add_prev_": _add_prev,
    "fc_2": _fc, "fc_3": _fc,
}


def _details(r: _Reader) -> DlibLayer:
    at = r.pos
    version = r.string()
    if version not in _LAYERS:
        raise DlibFormatError(f"layer type {version!r} at byte {at} is not supported by this reader "
                              f"(supported: {', '.join(sorted(_LAYERS))})")
    return _LAYERS[version](r, version)


def _input(r: _Reader) -> DlibLayer:
    version = r.string()
    if version != "input_rgb_image_sized":
        raise DlibFormatError(f"input layer {version!r} is not supported (expected input_rgb_image_sized)")
    mean = [r.float() for _ in range(3)]
    rows, cols = r.int(), r.int()
    return DlibLayer("input", version, {"mean_rgb": mean, "size": (rows, cols)})


def _loss(r: _Reader) -> DlibLayer:
    version = r.string()
    if version == "loss_metric_":
        return DlibLayer("loss", version, {"margin": 0.1, "dist_thresh": 0.75})
    if version == "loss_metric_2":
        return DlibLayer("loss", version, {"margin": r.float(), "dist_thresh": r.float()})
    raise DlibFormatError(f"loss layer {version!r} is not supported (expected loss_metric)")


def parse_network(data: bytes) -> DlibNet:
    """Decode a serialized dlib network; every byte must be accounted for."""
    r = _Reader(data)
    if r.int() != 1:
        raise DlibFormatError("not a dlib network file (expected add_loss_layer version 1 first)")
    loss = _loss(r)
    headers = []
    # Wrapper headers are small version numbers; the input layer starts with its name's length instead.
    while r.peek_int() in (1, 2, 3):
        headers.append(r.int())
    if not headers or headers[-1] not in (2, 3):
        raise DlibFormatError("the layer next to the input is not a computational layer")
    input_layer = _input(r)
    chain: list[DlibLayer] = []
    for depth, version in enumerate(reversed(headers)):
        if version == 1:  # add_tag_layer / add_skip_layer: nothing after their subnetwork
            chain.append(DlibLayer("marker", "1"))
            continue
        chain.append(_details(r))
        for _ in range(3):  # setup-called, gradient-stale and output-disabled flags
            r.bool()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        r.tensor()  # params_grad (or grad_final next to the input)
        if depth == 0 and version == 3:
            r.int()  # sample expansion factor
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} bytes left after the network (read {r.pos})")
    return DlibNet(input_layer, chain, loss)


def read_network(path: str | Path) -> DlibNet:
    """Decode a dlib network file (``.dat``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dlib network at {path}")
    try:
        return parse_network(path.read_bytes())
    except DlibFormatError as exc:
        raise DlibFormatError(f"{path}: {exc}") from None


__all__ = ["DlibFormatError", "DlibLayer", "DlibNet", "parse_network", "read_network"]
