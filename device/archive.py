"""The plan archive a board receives (an .npz of the plan JSON and its images), bounded before it is
decoded: the member count from the zip's end record, sizes and shapes from the headers, the JSON hardened
(``jsonsafe``), and the plan's images, targets, steps and subspace within the agent's ``PlanLimits``.
numpy and the standard library only."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .jsonsafe import loads_json
from .plan import ProbePlan, validate_plan_json
from .subspace import subspace_dims

_ARCHIVE_MEMBERS = {"images.npy", "plan_json.npy"}


@dataclass(frozen=True)
class PlanLimits:
    """What a board agent accepts in one plan; checked on the archive's headers before arrays are decoded."""

    max_images: int = 64
    max_targets: int = 64
    max_steps: int = 1000
    max_subspace_dims: int = 300
    max_image_side: int = 1024
    max_json_bytes: int = 1 << 20
    max_decoded_bytes: int = 64 << 20  # all members of the archive, decompressed



class PlanArchive:
    """A plan archive opened lazily: its JSON and its images' shape are read from headers, so limits and
    a model's needs can be checked before the images are decoded (at most once, by ``plan``)."""

    def __init__(self, data: bytes | str | os.PathLike | BinaryIO, limits: PlanLimits | None = None):
        self.limits = limits or PlanLimits(max_images=2**31, max_targets=2**31, max_steps=2**31,
                                           max_subspace_dims=2**31, max_image_side=2**31,
                                           max_json_bytes=2**40, max_decoded_bytes=2**62)
        if isinstance(data, (bytes, bytearray, memoryview)):
            source = io.BytesIO(data)
        else:
            source = data if hasattr(data, "read") else open(data, "rb")
        try:
            _check_entry_count(source)
            self._zip = zipfile.ZipFile(source)
        except _ZIP_ERRORS as exc:
            source.close()
            raise ValueError(f"not a probe plan archive ({exc})") from None
        self._source = source
        try:
            self._read_headers()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PlanArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._source.close()

    def _read_headers(self) -> None:
        infos = {i.filename: i for i in self._zip.infolist()}
        if set(infos) != _ARCHIVE_MEMBERS:
            raise ValueError(f"not a probe plan archive (members {sorted(infos)[:8]}, expected "
                             f"{sorted(_ARCHIVE_MEMBERS)})")
        total = sum(i.file_size for i in infos.values())
        if total > self.limits.max_decoded_bytes:
            raise PlanTooLarge(f"the plan archive decompresses to {total} bytes; this agent accepts at most "
                               f"{self.limits.max_decoded_bytes}")
        text_shape, text_dtype, fh = self._array_header("plan_json.npy")
        with fh:
            if text_dtype != np.uint8 or len(text_shape) != 1:
                raise ValueError("not a probe plan archive (plan_json must be a 1-D uint8 array)")
            if text_shape[0] > self.limits.max_json_bytes:
                raise PlanTooLarge(f"the plan JSON is {text_shape[0]} bytes; at most "
                                   f"{self.limits.max_json_bytes} are accepted")
            raw = self._read_exact(fh, text_shape[0], "plan_json")
        self.json = loads_json(raw.tobytes(), "the plan JSON")
        validate_plan_json(self.json)
        shape, dtype, fh = self._array_header("images.npy")
        fh.close()
        if dtype != np.float32 or len(shape) != 4:
            raise ValueError(f"images must be a 4-D float32 array (n, H, W, C), got {dtype} {shape}")
        self.image_count = int(shape[0])
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in shape[1:])
        self._check_limits()

    def _array_header(self, name: str) -> tuple[tuple[int, ...], np.dtype, Any]:
        try:
            fh = self._zip.open(name)
        except _ZIP_ERRORS as exc:
            raise ValueError(f"not a probe plan archive ({name}: {exc})") from None
        try:
            version = np.lib.format.read_magic(fh)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = header(fh)
        except _ZIP_ERRORS as exc:
            fh.close()
            raise ValueError(f"not a probe plan archive ({name}: {exc})") from None
        if fortran or dtype.hasobject:
            fh.close()
            raise ValueError(f"not a probe plan archive ({name} must be a plain C-order array)")
        return tuple(shape), dtype, fh

    @staticmethod
    def _read_exact(fh, count: int, name: str, dtype: np.dtype = np.uint8) -> np.ndarray:
        nbytes = count * np.dtype(dtype).itemsize
        try:
            data = fh.read(nbytes)
        except _ZIP_ERRORS as exc:
            raise ValueError(f"not a probe plan archive ({name}: {exc})") from None
        if len(data) != nbytes:
            raise ValueError(f"not a probe plan archive ({name} is cut off)")
        return np.frombuffer(data, dtype)

    def _check_limits(self) -> None:
        lim, d = self.limits, self.json
        checks = [
            (self.image_count, lim.max_images, "images"),
            (len(d["targets"]), lim.max_targets, "targets"),
            (d.get("steps", 20), lim.max_steps, "steps"),
            (max(self.image_shape[:2], default=0), lim.max_image_side, "image side (pixels)"),
            (subspace_dims(d.get("subspace", {"kind": "full"}), self.image_shape), lim.max_subspace_dims,
             "subspace dimensions"),
        ]
        for value, limit, what in checks:
            if value > limit:
                raise PlanTooLarge(f"the plan has {value} {what}; this agent accepts at most {limit}")

    def plan(self) -> ProbePlan:
        """Decode the images and build the plan (ValueError naming the field when it is malformed)."""
        _, dtype, fh = self._array_header("images.npy")
        with fh:
            count = self.image_count * int(np.prod(self.image_shape))
            images = self._read_exact(fh, count, "images", dtype).reshape(self.image_count, *self.image_shape)
        return ProbePlan.from_json(self.json, images)


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
               RuntimeError, KeyError)


def _check_entry_count(fh) -> None:
    """Refuse archives whose end record lists other than two entries, before zipfile parses the directory
    (a body of millions of tiny entries would otherwise cost far more memory than its size)."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - (1 << 16) - 22))
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        raise ValueError("no zip end record")
    entries = int.from_bytes(tail[at + 10:at + 12], "little")
    if entries != len(_ARCHIVE_MEMBERS):
        raise ValueError(f"{entries} members, expected {len(_ARCHIVE_MEMBERS)}")
    fh.seek(0)


class PlanTooLarge(ValueError):
    """A plan over the agent's limits (answered 413)."""


def read_plan(data: bytes | str | os.PathLike, limits: PlanLimits | None = None) -> ProbePlan:
    """A plan from ``ProbePlan.to_bytes`` output (bytes or a file path), within ``limits`` when given."""
    with PlanArchive(data, limits) as archive:
        return archive.plan()
