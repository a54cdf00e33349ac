"""Known damage done to an exported int8 variant, to check the check: a block's weights rounded to fewer
bits, or a block's activation range clipped. Both files of the variant get the same damage and a
manifest that describes the new bytes; the source model stays recorded, so the check accepts them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

from device.manifest import load_manifest, manifest_path_for, sha256_file

from .. import atomic
from ..export.convert import block_layers, float_nodes
from ..export.graph import describe_io
from ..foreign.graph import read_object

CONV_OPS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D"}  # BuiltinOperator codes
# ADD: an int8 probe file's activations are ADD(x, 0) with the activation fused
# (toolkit.export.graph.xnnpack_int8_taps).
ACTIVATION_OPS = {0: "ADD", 19: "RELU", 21: "RELU6", 54: "PRELU", 98: "LEAKY_RELU"}


def _block_convs(model_obj, layers: list[str]) -> list:
    """The block's conv operators in the main subgraph (their output tensor is named for the block)."""
    graph = model_obj.subgraphs[0]
    names = [t.name.decode() if isinstance(t.name, bytes) else t.name for t in graph.tensors]
    wanted = set(float_nodes(names, layers))
    def builtin(op) -> int:
        code = model_obj.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    # In a probe file the conv's output is a tap, named for the signature: the block's activation
    # reading it carries the block's name instead.
    named_by_activation = {op.inputs[0] for op in graph.operators if builtin(op) in ACTIVATION_OPS
                           and names[op.outputs[0]] in wanted}
    convs = [op for op in graph.operators if builtin(op) in CONV_OPS
             and (names[op.outputs[0]] in wanted or op.outputs[0] in named_by_activation)]
    if not convs:
        raise ValueError(f"no int8 conv of layers {layers} in the file")
    return convs


def round_weights(content: bytes, layers: list[str], bits: int) -> bytes:
    """The block's int8 conv weights rounded to a ``bits``-bit grid of the same range."""
    model_obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    step = 2 ** (8 - bits)
    for op in _block_convs(model_obj, layers):
        tensor = model_obj.subgraphs[0].tensors[op.inputs[1]]
        buffer = model_obj.buffers[tensor.buffer]
        codes = np.frombuffer(bytes(bytearray(buffer.data)), np.int8).astype(np.int32)
        rounded = np.clip(np.round(codes / step) * step, -128, 127).astype(np.int8)
        buffer.data = np.frombuffer(rounded.tobytes(), np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_obj))


def clip_range(content: bytes, layers: list[str], factor: float) -> bytes:
    """The block's conv outputs requantized onto ``factor`` of their calibrated range (values beyond it
    saturate; consumers read the same scale, so nothing else changes)."""
    model_obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    return _clipped(model_obj, [op.outputs[0] for op in _block_convs(model_obj, layers)], factor)


def clip_tensor_range(content: bytes, names: list[str], factor: float) -> bytes:
    """``clip_range`` for tensors named as in the file (any int8 TFLite file, e.g. one converted
    elsewhere)."""
    model_obj = read_object(content)
    graph = model_obj.subgraphs[0]
    picked = [i for i, t in enumerate(graph.tensors) if t.name.decode() in names]
    if len(picked) != len(set(names)):
        raise ValueError(f"not every tensor of {names} is in the file")
    return _clipped(model_obj, picked, factor)


def _clipped(model_obj, tensors: list[int], factor: float) -> bytes:
    for i in tensors:
        q = model_obj.subgraphs[0].tensors[i].quantization
        q.scale = [float(s) * factor for s in q.scale]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_obj))


def damaged_copy(model, files: dict[str, Path], tap: str, out: Path, kind: str,
                 amount: float) -> dict[str, Path]:
    """Copies of a variant's deploy and probe files with ``kind`` ("weights": ``amount`` bits; "range":
    ``amount`` of the range) applied to the block behind ``tap``; manifests rewritten for the new bytes."""
    out.mkdir(parents=True, exist_ok=True)
    damaged = {}
    for role, path in files.items():
        manifest = load_manifest(manifest_path_for(path))
        layers = block_layers(model, tap)
        content = Path(path).read_bytes()
        content = (round_weights(content, layers, int(amount)) if kind == "weights"
                   else clip_range(content, layers, amount))
        target = out / Path(path).name
        atomic.write_bytes(target, content)
        io = describe_io(content)
        for entry in manifest["outputs"]:
            entry.update({k: io["outputs"][entry["key"]][k] for k in ("scale", "zero_point", "int8")})
        manifest.update(sha256=sha256_file(target), bytes=len(content),
                        damage={"kind": kind, "amount": amount, "tap": tap})
        atomic.write_json(manifest_path_for(target), manifest)
        damaged[role] = target
    return damaged


