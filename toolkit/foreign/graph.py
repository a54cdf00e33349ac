"""Taps found in any TFLite file: the outputs of CONV_2D, DEPTHWISE_CONV_2D and ADD that feed an activation
op (pre-activation), or whose activation the converter fused into them (post-activation, noted), with
their total stride and receptive field walked through the graph.

Host side: the file is read with TensorFlow's flatbuffer schema (``flatbuffer_utils``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

TAPPABLE = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD")
ACTIVATIONS = ("RELU", "RELU6", "RELU_N1_TO_1", "PRELU", "LEAKY_RELU", "ELU", "HARD_SWISH", "LOGISTIC",
               "TANH", "GELU")
POOLS = ("MAX_POOL_2D", "AVERAGE_POOL_2D")
# Ops after which a map is one vector of the whole face.
GLOBAL = ("MEAN", "FULLY_CONNECTED", "RESHAPE", "SUM", "REDUCE_MAX")


class ForeignModelError(ValueError):
    """A TFLite file that faceprobe cannot check: unreadable, without a signature, without taps."""


def read_object(data: bytes):
    """A TFLite file's schema object tree, with every buffer's data inline: converters that store
    weights after the flatbuffer (ai-edge-quantizer does: ``Buffer.offset``/``size``) would otherwise
    lose them when the tree is written back."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    for buffer in model.buffers or []:
        if getattr(buffer, "offset", 0) and getattr(buffer, "size", 0):
            buffer.data = np.frombuffer(data[buffer.offset:buffer.offset + buffer.size], np.uint8)
            buffer.offset, buffer.size = 0, 0
    return model


@dataclass(frozen=True)
class Candidate:
    """A tensor that can be tapped: its index and name in the file, the op producing it, its shape
    (h, w, c), total stride and receptive field (input pixels), whether its activation is fused into it
    (post-activation), and its position among the file's candidates."""

    tensor: int
    name: str
    op: str
    shape: tuple[int, int, int]
    stride: int
    receptive_field: int
    post_activation: bool
    position: int


@dataclass
class TFLiteGraph:
    """A TFLite file's first subgraph, read for tap finding and rewriting (``model`` is the schema's
    object tree: ``flatbuffer_utils`` writes it back)."""

    path: Path
    model: object
    schema: object
    geometry: dict = field(default_factory=dict)  # tensor -> (total stride, receptive field), once walked
    embedding_key: str = ""  # the signature's one output, once read

    @classmethod
    def read(cls, path: str | Path) -> TFLiteGraph:
        from tensorflow.lite.python import schema_py_generated as schema

        path = Path(path)
        if not path.is_file():
            raise ForeignModelError(f"no file at {path}: pass a .tflite file")
        data = path.read_bytes()
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise ForeignModelError(f"{path} is not a TFLite file (no TFL3 identifier); pass a .tflite")
        try:
            model = read_object(data)
        except Exception as exc:  # the schema's reader raises anything on damaged bytes
            raise ForeignModelError(f"{path} could not be read as a TFLite flatbuffer ({exc})") from None
        if not model.subgraphs:
            raise ForeignModelError(f"{path} has no subgraph")
        return cls(path, model, schema)

    @property
    def graph(self):
        return self.model.subgraphs[0]

    def op_name(self, op) -> str:
        names = {v: k for k, v in vars(self.schema.BuiltinOperator).items() if not k.startswith("_")}
        code = self.model.operatorCodes[op.opcodeIndex]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")

    def tensor_name(self, index: int) -> str:
        return self.graph.tensors[index].name.decode(errors="replace")

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.graph.tensors[index].shape)

    def input_shape(self) -> tuple[int, ...]:
        inputs = list(self.graph.inputs)
        if len(inputs) != 1:
            raise ForeignModelError(f"{self.path} has {len(inputs)} inputs; a face model takes one image")
        shape = self.shape(inputs[0])
        if len(shape) != 4 or shape[3] not in (1, 3):
            raise ForeignModelError(f"{self.path} takes input of shape {list(shape)}; faceprobe checks "
                                    "models taking (1, H, W, 1 or 3) images (NHWC)")
        return shape

    def signature(self):
        """The file's single signature (refused without one: outputs are read by signature key)."""
        sigs = self.model.signatureDefs or []
        if len(sigs) != 1:
            raise ForeignModelError(f"{self.path} has {len(sigs)} signatures; faceprobe reads outputs by "
                                    "signature key and needs exactly one (convert with a serving signature, "
                                    "e.g. TFLiteConverter.from_saved_model or onnx2tf's default)")
        sig = sigs[0]
        if self.embedding_key:
            return sig  # read before taps were added to it
        if len(sig.outputs) != 1:
            raise ForeignModelError(f"{self.path} has {len(sig.outputs)} outputs; pass a face-embedding "
                                    "model with one output, the embedding")
        self.embedding_key = sig.outputs[0].name.decode()
        return sig

    def fused(self, op) -> bool:
        options = op.builtinOptions
        return bool(getattr(options, "fusedActivationFunction", 0))

    def candidates(self) -> list[Candidate]:
        """Every tappable tensor in graph order, with its geometry."""
        _, height, _, _ = self.input_shape()
        graph = self.graph
        consumers: dict[int, list] = {}
        for op in graph.operators:
            for i in op.inputs:
                consumers.setdefault(int(i), []).append(op)
        geometry = {int(graph.inputs[0]): (1, 1)}
        found: list[Candidate] = []
        for op in graph.operators:
            name = self.op_name(op)
            inputs = [geometry[int(i)] for i in op.inputs if int(i) in geometry]
            stride, rf = max(inputs) if inputs else (1, 1)
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D") + POOLS:
                o = op.builtinOptions
                if name in POOLS:
                    kh = int(o.filterHeight)
                else:
                    kh = self.shape(op.inputs[1])[1]
                dilation = int(getattr(o, "dilationHFactor", 1) or 1)
                rf += (kh - 1) * dilation * stride
                stride *= int(o.strideH)
            elif name in GLOBAL:
                rf = height
            rf = min(rf, height)
            for out in op.outputs:
                geometry[int(out)] = (stride, rf)
            if name not in TAPPABLE or len(op.outputs) != 1 or self.is_activation(op):
                continue
            out = int(op.outputs[0])
            shape = self.shape(out)
            if len(shape) != 4 or shape[1] < 2:
                continue  # 1x1 maps are vectors, not features with a place
            fused = self.fused(op)
            if not fused and not self.feeds_activation(out, consumers):
                continue
            found.append(Candidate(out, self.tensor_name(out), name, tuple(shape[1:]),
                                   max(1, round(height / shape[1])), rf, fused, len(found)))
        self.geometry = geometry
        return found

    def feeds_activation(self, tensor: int, consumers: dict[int, list]) -> bool:
        """Whether an activation op reads ``tensor``, directly or through a (de)quantize: a quantizer that
        leaves the activation in float puts one between."""
        for op in consumers.get(tensor, []):
            if self.is_activation(op):
                return True
            if self.op_name(op) in ("QUANTIZE", "DEQUANTIZE") and any(
                    self.is_activation(c) for c in consumers.get(int(op.outputs[0]), [])):
                return True
        return False

    def is_activation(self, op) -> bool:
        """An activation op, or an ADD of a constant zero with a fused activation: that activation alone
        (faceprobe's own int8 probe files write each int8 ReLU so, for XNNPACK; toolkit/export/graph.py)."""
        name = self.op_name(op)
        if name in ACTIVATIONS:
            return True
        return (name == "ADD" and self.fused(op) and len(op.inputs) == 2
                and any(self.constant_zero(int(i)) for i in op.inputs))

    def constant_zero(self, index: int) -> bool:
        """Whether tensor ``index`` is a constant whose every value is 0.0 (its zero point, if quantized)."""
        tensor = self.graph.tensors[index]
        data = self.model.buffers[tensor.buffer].data if tensor.buffer else None
        if data is None or not len(data):
            return False
        types = self.schema.TensorType
        dtype = {types.INT8: np.int8, types.UINT8: np.uint8, types.INT16: np.int16, types.INT32: np.int32,
                 types.FLOAT32: np.float32, types.FLOAT16: np.float16}.get(tensor.type)
        if dtype is None:
            return False
        values = np.asarray(data, np.uint8).view(dtype).astype(np.float64)
        zero_point = tensor.quantization.zeroPoint if tensor.quantization is not None else None
        zero = float(zero_point[0]) if zero_point is not None and len(zero_point) else 0.0
        return bool(np.all(values == zero))

    def named(self, names: list[str]) -> list[Candidate]:
        """The candidates ``--tap`` names (any 4-D tensor's name in the file), in graph order."""
        index = {self.tensor_name(i): i for i in range(len(self.graph.tensors))}
        missing = [n for n in names if n not in index]
        if missing:
            raise ForeignModelError(f"{self.path} has no tensor named {missing[0]!r}; list its tensors with "
                                    "`faceprobe import FILE.tflite --json` or a viewer such as Netron")
        found = {c.tensor: c for c in self.candidates()}
        _, height, _, _ = self.input_shape()
        picked = []
        for name in names:
            i = index[name]
            shape = self.shape(i)
            if len(shape) != 4:
                raise ForeignModelError(f"tensor {name!r} of {self.path} has shape {list(shape)}; a tap is "
                                        "a (1, h, w, c) map")
            rf = self.geometry.get(i, (1, height))[1]
            picked.append(found.get(i) or Candidate(i, name, "named", tuple(shape[1:]),
                                                    max(1, round(height / shape[1])), rf, False, 0))
        return [replace(c, position=k) for k, c in enumerate(self.order(picked))]

    def order(self, cands: list[Candidate]) -> list[Candidate]:
        """``cands`` in the order their producing ops run."""
        produced = {int(o): k for k, op in enumerate(self.graph.operators) for o in op.outputs}
        return sorted(cands, key=lambda c: produced.get(c.tensor, -1))

    def with_outputs(self, taps: list[tuple[str, int]]) -> bytes:
        """The file's bytes with ``taps`` ((signature key, tensor index)) added as outputs of the graph and
        of its signature; nothing else changes."""
        from tensorflow.lite.tools import flatbuffer_utils

        graph, sig = self.graph, self.signature()
        outputs = [int(i) for i in graph.outputs]
        for key, index in taps:
            if index not in outputs:
                outputs.append(index)
            entry = self.schema.TensorMapT()
            entry.name, entry.tensorIndex = key.encode(), index
            sig.outputs.append(entry)
        graph.outputs = np.array(outputs, np.int32)
        return bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))

    def variant(self) -> str:
        """What the converter made, read from the tensors: int8 / int16x8 activations, dynamic_int8
        (int8 weights, float activations), float16 weights, or float32."""
        types = self.schema.TensorType
        convs = [op for op in self.graph.operators if self.op_name(op) in TAPPABLE[:2]]
        acts = {self.graph.tensors[int(op.outputs[0])].type for op in convs}
        weights = {self.graph.tensors[int(op.inputs[1])].type for op in convs}
        if types.INT16 in acts:
            return "int16x8"
        if types.INT8 in acts:
            return "int8"
        if types.INT8 in weights:
            return "dynamic_int8"
        dequantized = {self.graph.tensors[int(op.inputs[0])].type for op in self.graph.operators
                       if self.op_name(op) == "DEQUANTIZE"}
        return "float16" if types.FLOAT16 in dequantized else "float32"
