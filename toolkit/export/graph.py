"""Reading a converted `.tflite` graph on the host: signature, tensors, quantisation around I/O.

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


def _shape(detail: dict) -> list[int | None]:
    return [None if int(s) < 0 else int(s) for s in detail["shape_signature"]]
