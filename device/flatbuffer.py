"""A structural check of a TFLite flatbuffer, cheap enough to run in the agent's own process.

Walks the parts of the TFLite schema a model is made of (operator codes, subgraphs, tensors,
operators, buffers) and refuses offsets outside the file, indices outside their tables and tensors
whose declared shape alone needs more memory than a limit. Most corrupt uploads stop here in well
under a millisecond; what passes still has to load and run in a sandbox child (``device.sandbox``),
which is what guarantees the agent's safety; this only saves a child per obvious reject.

The walk also lists the offsets of the scalar fields it read (``slots``), which the fuzz benchmark
edits.
"""

from __future__ import annotations

import struct

from .manifest import ModelFileError, validate_tflite_bytes

# Bytes per element of TFLite's TensorType values (0 FLOAT32 ... 17 INT4); unknown types count as 8.
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 5: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 13: 4,
               14: 8, 15: 4, 16: 2, 17: 1}
MAX_VECTOR = 1 << 24


class TFLiteStructure:
    """The walk over one flatbuffer; ``check`` raises ModelFileError for the first inconsistency."""

    def __init__(self, data: bytes, max_tensor_bytes: int = 1 << 30):
        self.data, self.max_tensor_bytes = data, max_tensor_bytes
        self.slots: list[tuple[int, int, str]] = []  # (offset, width in bytes, field)

    def check(self) -> None:
        validate_tflite_bytes(self.data, "the uploaded model")
        try:
            self._model(self._u32(0))
        except (struct.error, IndexError) as exc:
            raise ModelFileError(f"the uploaded model is not a valid TFLite flatbuffer ({exc})") from None

    def _bad(self, what: str) -> ModelFileError:
        return ModelFileError(f"the uploaded model is not a valid TFLite flatbuffer: {what}")

    def _u32(self, at: int) -> int:
        if not 0 <= at <= len(self.data) - 4:
            raise self._bad(f"offset {at} lies outside the file ({len(self.data)} bytes)")
        return struct.unpack_from("<I", self.data, at)[0]

    def _field(self, table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", self.data, self._in(table, 4))[0]
        size = struct.unpack_from("<H", self.data, self._in(vtable, 4))[0]
        self._in(vtable, size)
        if 4 + 2 * index >= size:
            return None
        off = struct.unpack_from("<H", self.data, vtable + 4 + 2 * index)[0]
        return table + off if off else None

    def _in(self, at: int, size: int) -> int:
        if at < 0 or at + size > len(self.data):
            raise self._bad(f"{size} bytes at offset {at} lie outside the file ({len(self.data)} bytes)")
        return at

    def _vector(self, table: int, index: int, what: str, width: int = 4) -> tuple[int, int]:
        field = self._field(table, index)
        if field is None:
            return 0, 0
        start = self._in(field + self._u32(field), 4)
        length = self._u32(start)
        if length > MAX_VECTOR:
            raise self._bad(f"{what} has {length} entries")
        self._in(start + 4, length * width)
        self.slots.append((start, 4, what + ".length"))
        return start + 4, length

    def _tables(self, table: int, index: int, what: str) -> list[int]:
        start, length = self._vector(table, index, what)
        return [self._in(start + 4 * i + self._u32(start + 4 * i), 4) for i in range(length)]

    def _scalar(self, table: int, index: int, fmt: str, what: str, default: int = 0) -> int:
        field = self._field(table, index)
        if field is None:
            return default
        size = struct.calcsize(fmt)
        self.slots.append((self._in(field, size), size, what))
        return struct.unpack_from("<" + fmt, self.data, field)[0]

    def _ints(self, table: int, index: int, what: str) -> list[int]:
        start, length = self._vector(table, index, what)
        self.slots.extend((start + 4 * i, 4, what) for i in range(min(length, 64)))
        return list(struct.unpack_from(f"<{length}i", self.data, start)) if length else []

    def _model(self, root: int) -> None:
        self._in(root, 4)
        codes = self._tables(root, 1, "operator_codes")
        for code in codes:
            self._scalar(code, 0, "b", "opcode.deprecated_builtin_code")
            self._scalar(code, 2, "i", "opcode.version")
            self._scalar(code, 3, "i", "opcode.builtin_code")
        buffers = self._tables(root, 4, "buffers")
        for buffer in buffers:
            self._vector(buffer, 0, "buffer.data", width=1)
            offset = self._scalar(buffer, 1, "Q", "buffer.offset")
            size = self._scalar(buffer, 2, "Q", "buffer.size")
            if offset > 1 and offset + size > len(self.data):
                raise self._bad(f"a buffer at offset {offset} of {size} bytes lies outside the file")
        graphs = self._tables(root, 2, "subgraphs")
        if not graphs:
            raise self._bad("it has no subgraph")
        for g, graph in enumerate(graphs):
            tensors = self._tables(graph, 0, "tensors")
            for t, tensor in enumerate(tensors):
                shape = self._ints(tensor, 0, "tensor.shape")
                kind = self._scalar(tensor, 1, "b", "tensor.type")
                if self._scalar(tensor, 2, "I", "tensor.buffer") >= max(len(buffers), 1):
                    raise self._bad(f"tensor {t} of subgraph {g} names a buffer that does not exist")
                self._ints(tensor, 7, "tensor.shape_signature")
                size = _TYPE_BYTES.get(kind, 8)
                for dim in shape:
                    if dim < 0:
                        raise self._bad(f"tensor {t} of subgraph {g} has a negative dimension")
                    size *= dim
                if size > self.max_tensor_bytes:
                    raise self._bad(f"tensor {t} of subgraph {g} alone would take {size} bytes")
            for name in ("inputs", "outputs"):
                for i in self._ints(graph, 1 if name == "inputs" else 2, f"subgraph.{name}"):
                    if not 0 <= i < len(tensors):
                        raise self._bad(f"subgraph {g} {name} name tensor {i} of {len(tensors)}")
            for o, op in enumerate(self._tables(graph, 3, "operators")):
                if self._scalar(op, 0, "I", "operator.opcode_index") >= len(codes):
                    raise self._bad(f"operator {o} of subgraph {g} names an operator code that is not there")
                for i in self._ints(op, 1, "operator.inputs") + self._ints(op, 2, "operator.outputs"):
                    if not -1 <= i < len(tensors):
                        raise self._bad(f"operator {o} of subgraph {g} names tensor {i} of {len(tensors)}")
                self._scalar(op, 3, "B", "operator.builtin_options_type")


def validate_structure(data: bytes, max_tensor_bytes: int = 1 << 30) -> None:
    """Raise ModelFileError when ``data`` is not a structurally sound TFLite model (see the module doc)."""
    TFLiteStructure(data, max_tensor_bytes).check()
