"""Activation ranges of a calibrated (not yet quantized) model, read by another rule than min/max.

The converter's calibration records each tensor's min and max over the calibration images; one
outlier pixel then stretches a range and coarsens every other value's step. The percentile rule runs
the calibrated float graph on the same images, keeps the exact tails of every recorded tensor, and
sets its range to the ``p``-th percentile of its values at either end (zero stays inside the range).
"""

from __future__ import annotations

import math

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tensorflow.lite.tools import flatbuffer_utils


def recorded_tensors(model_obj) -> dict[int, object]:
    """Tensor index -> tensor of the main subgraph, for every tensor calibration gave a min/max."""
    tensors = model_obj.subgraphs[0].tensors

    def constant(t) -> bool:
        data = model_obj.buffers[t.buffer].data if t.buffer < len(model_obj.buffers) else None
        return data is not None and len(data) > 0

    return {i: t for i, t in enumerate(tensors)
            if t.quantization is not None and t.quantization.min is not None
            and len(t.quantization.min) == 1 and not constant(t)}


def percentile_ranges(calibrated: bytes, images: np.ndarray, percentile: float) -> bytes:
    """``calibrated`` with every recorded range replaced by the ``percentile`` rule over ``images``."""
    model_obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    recorded = recorded_tensors(model_obj)
    it = Interpreter(model_content=bytes(calibrated), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner_in = it.get_input_details()[0]
    it.resize_tensor_input(runner_in["index"], [1, *images.shape[1:]])
    it.allocate_tensors()
    tails: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    counts: dict[int, int] = {}
    per_image = {i: int(np.prod(it.get_tensor(i).shape)) for i in recorded}
    keep = {i: max(1, math.ceil(per_image[i] * len(images) * (1 - percentile / 100))) for i in recorded}
    for image in images:
        it.set_tensor(runner_in["index"], image[None].astype(np.float32))
        it.invoke()
        for i in recorded:
            v = it.get_tensor(i).ravel()
            high, low = (np.concatenate([tails[i][0], v]), np.concatenate([tails[i][1], -v])) if i in tails \
                else (v, -v)
            k = keep[i]
            tails[i] = (np.partition(high, -k)[-k:] if len(high) > k else high,
                        np.partition(low, -k)[-k:] if len(low) > k else low)
            counts[i] = counts.get(i, 0) + v.size
    for i, tensor in recorded.items():
        high, low = tails[i]
        # The smallest kept tail value is the percentile (the tails hold exactly the top k values).
        tensor.quantization.max = [max(float(np.min(high)), 0.0)]
        tensor.quantization.min = [min(-float(np.min(low)), 0.0)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_obj))
