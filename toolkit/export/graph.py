"""Reading a converted `.tflite` graph on the host: signature, tensors, quantisation around I/O; and
the rewrite that keeps an int8 probe model inside XNNPACK (``xnnpack_int8_taps``).

Host-only (export time): the board reads these facts from the manifest instead.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def _interpreter(content: bytes) -> Interpreter:
    # Builtin kernels only: the default delegate would replace ops by DELEGATE nodes.
    it = Interpreter(model_content=content,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def _quant(detail: dict) -> dict | None:
    scale, zero_point = detail["quantization"]
    return {"scale": float(scale), "zero_point": int(zero_point)} if scale else None


def tensor_names(content: bytes) -> list[str]:
    return [d["name"] for d in _interpreter(content).get_tensor_details()]


def output_tensor_names(content: bytes) -> dict[str, str]:
    """Signature output key -> tensor name."""
    it = _interpreter(content)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    return {k: names[d["index"]] for k, d in it.get_signature_runner().get_output_details().items()}


def describe_io(content: bytes) -> dict:
    """Signature key, input and outputs as the manifest records them (without tap metadata).

    For an int8 model with float I/O, ``quantization_step`` is the first QUANTIZE op's output and each
    output's ``int8`` is the input of the DEQUANTIZE that produces it.
    """
    it = _interpreter(content)
    signatures = it.get_signature_list()
    if len(signatures) != 1:
        raise RuntimeError(f"expected one signature in the converted model, found {list(signatures)}")
    signature = next(iter(signatures))
    runner = it.get_signature_runner(signature)
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    producers = {t: op for op in ops for t in op["outputs"]}
    (in_key, in_detail), = runner.get_input_details().items()

    def int8_of(index: int) -> dict | None:
        d = details[index]
        if d["dtype"] == np.int8:
            return _quant(d)
        op = producers.get(index)
        if op and op["op_name"] == "DEQUANTIZE" and details[op["inputs"][0]]["dtype"] == np.int8:
            return _quant(details[op["inputs"][0]])
        return None

    step = _quant(in_detail) if in_detail["dtype"] == np.int8 else None
    if step is None:
        quantize = [op for op in ops if op["op_name"] == "QUANTIZE" and in_detail["index"] in op["inputs"]]
        if quantize and details[quantize[0]["outputs"][0]]["dtype"] == np.int8:
            step = _quant(details[quantize[0]["outputs"][0]])
    q_in = _quant(in_detail)
    return {
        "signature": signature,
        "input": {
            "key": in_key,
            "shape": _shape(in_detail),
            "dtype": np.dtype(in_detail["dtype"]).name,
            "scale": q_in["scale"] if q_in else None,
            "zero_point": q_in["zero_point"] if q_in else None,
            "quantization_step": step,
        },
        "outputs": {
            key: {
                "shape": _shape(d),
                "dtype": np.dtype(d["dtype"]).name,
                "scale": (_quant(d) or {}).get("scale"),
                "zero_point": (_quant(d) or {}).get("zero_point"),
                "int8": int8_of(d["index"]),
            }
            for key, d in runner.get_output_details().items()
        },
    }


def float_tensor_names(content: bytes, names: list[str]) -> list[str]:
    """Which of ``names`` are float32 tensors in the model (to confirm kept-float blocks)."""
    wanted = set(names)
    return [d["name"] for d in _interpreter(content).get_tensor_details()
            if d["name"] in wanted and d["dtype"] == np.float32]


def integer_ops(content: bytes, kinds: tuple[str, ...]) -> list[str]:
    """Ops of ``kinds`` whose output is not float32 (to confirm op kinds kept in float): their outputs'
    names."""
    it = _interpreter(content)
    details = {d["index"]: d for d in it.get_tensor_details()}
    return [details[op["outputs"][0]]["name"] for op in it._get_ops_details()
            if op["op_name"] in kinds and details[op["outputs"][0]]["dtype"] != np.float32]


def _shape(detail: dict) -> list[int | None]:
    return [None if int(s) < 0 else int(s) for s in detail["shape_signature"]]


# ReLU-family ops and the fused activation an ADD of zero takes over from them.
_RELU_ACTIVATIONS = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}


def xnnpack_int8_taps(content: bytes, tap_keys: list[str]) -> tuple[bytes, dict]:
    """An int8 probe model rewritten so that XNNPACK runs it as one partition, with the same tap values.

    Exposing a pre-activation tap keeps its activation from being fused into the conv, and XNNPACK
    runs standalone activations only in float: every int8 RELU fell back to the builtin kernels and
    cut the delegated graph in two (a MobileFaceNet probe model ran as 20 partitions, ~7x slower than
    its deploy model). Two changes, neither of which changes a value:

    - each int8 RELU/RELU6/RELU_N1_TO_1 becomes ``ADD(x, 0)`` with that fused activation and the same
      output quantisation (XNNPACK runs int8 ADD with a fused activation);
    - a tap output is the int8 tensor itself instead of a DEQUANTIZE of it (the board dequantises
      with the scale and zero point the manifest records, the same arithmetic), so no float copy of
      every tap map is made inside the graph. The embedding keeps its DEQUANTIZE.

    Returns (the new model, {"activations_rewritten": n, "tap_dequantize_removed": m}).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(op) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")

    add = _opcode(model, schema, schema.BuiltinOperator.ADD)
    graph = model.subgraphs[0]
    (signature,) = model.signatureDefs
    tap_tensors = {o.tensorIndex for o in signature.outputs if o.name.decode() in tap_keys}
    rewritten, remap, kept = 0, {}, []
    for op in graph.operators:
        name = op_name(op)
        x = graph.tensors[op.inputs[0]] if len(op.inputs) else None
        if name in _RELU_ACTIVATIONS and x is not None and x.type == schema.TensorType.INT8:
            op.inputs = np.array([op.inputs[0], _zero_like(model, graph, schema, x)], np.int32)
            op.opcodeIndex = add
            options = schema.AddOptionsT()
            options.fusedActivationFunction = getattr(schema.ActivationFunctionType, _RELU_ACTIVATIONS[name])
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, options
            rewritten += 1
        elif (name == "DEQUANTIZE" and op.outputs[0] in tap_tensors and x is not None
              and x.type == schema.TensorType.INT8):
            remap[int(op.outputs[0])] = int(op.inputs[0])
            continue
        kept.append(op)
    graph.operators = kept
    graph.outputs = np.array([remap.get(int(i), int(i)) for i in graph.outputs], np.int32)
    for out in signature.outputs:
        out.tensorIndex = remap.get(out.tensorIndex, out.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), {
        "activations_rewritten": rewritten, "tap_dequantize_removed": len(remap)}


def _opcode(model, schema, builtin: int) -> int:
    """Index of ``builtin`` in the model's operator codes, added when missing."""
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _zero_like(model, graph, schema, x) -> int:
    """A new constant int8 scalar holding 0.0 in the quantisation of tensor ``x``; its index."""
    quant = schema.QuantizationParametersT()
    quant.scale = np.array(x.quantization.scale[:1], np.float32)
    quant.zeroPoint = np.array(x.quantization.zeroPoint[:1], np.int64)
    buffer = schema.BufferT()
    buffer.data = np.array(quant.zeroPoint, np.int8).view(np.uint8)
    model.buffers.append(buffer)
    zero = schema.TensorT()
    zero.shape, zero.type = np.array([1], np.int32), schema.TensorType.INT8
    zero.buffer = len(model.buffers) - 1
    zero.name, zero.quantization = f"tap_zero_{len(graph.tensors)}".encode(), quant
    graph.tensors.append(zero)
    return len(graph.tensors) - 1
