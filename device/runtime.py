"""Run an exported `.tflite` by its manifest: LiteRT (ai_edge_litert), tflite_runtime as fallback.

Outputs are read by signature key only; inner tensors are never read because the interpreter reuses
their memory. The kernel path (XNNPACK or builtin) changes int8 results, so it is chosen explicitly
and reported by ``info()``.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from .manifest import (
    ManifestError,
    ModelFileError,
    load_manifest,
    manifest_path_for,
    read_tflite,
    tap_entries,
)

# kernels -> OpResolverType member: XNNPACK is the default delegate of the builtin resolver.
KERNELS = {"xnnpack": "BUILTIN", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}
_BACKENDS = (("ai-edge-litert", "ai_edge_litert.interpreter"),
             ("tflite-runtime", "tflite_runtime.interpreter"))
_INT_LIMITS = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


class InputError(ValueError):
    """Images that do not fit the model's input."""


def load_backend() -> tuple[str, str, ModuleType]:
    """(distribution name, version, interpreter module): ai_edge_litert first, then tflite_runtime."""
    tried = []
    for dist, module_name in _BACKENDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            tried.append(f"{module_name}: {exc}")
            continue
        return dist, _version(dist), module
    raise ImportError("no TFLite interpreter found (" + "; ".join(tried) + "); install one with "
                      "`pip install 'faceprobe[device]'` (or '[device-legacy]' for tflite-runtime)")


@functools.cache
def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class Runtime:
    """One exported model in a LiteRT interpreter, fed normalised float images of any batch size.

    ``kernels``: "xnnpack" (default delegate), "builtin" (builtin kernels, no default delegate) or
    "reference" (reference kernels: slow, for cross-checks). ``delegate``: path to an external
    delegate library, with ``delegate_options``.
    """

    def __init__(
        self,
        tflite_path: str | os.PathLike,
        manifest_path: str | os.PathLike | None = None,
        threads: int | None = None,
        kernels: str = "xnnpack",
        delegate: str | None = None,
        delegate_options: dict | None = None,
    ):
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for the runtime default), got {threads}")
        self.path = Path(tflite_path)
        self.manifest_path = Path(manifest_path) if manifest_path else manifest_path_for(self.path)
        if not self.path.is_file():
            raise ModelFileError(f"no model file at {self.path}: "
                                 "pass the .tflite written by `faceprobe export`")
        self.manifest = load_manifest(self.manifest_path)
        content = read_tflite(self.path, self.manifest)
        self.kernels = kernels
        self.threads = threads
        self.delegate = delegate
        self.backend, self.backend_version, module = load_backend()
        try:
            delegates = [module.load_delegate(delegate, delegate_options)] if delegate else None
        except (ValueError, OSError) as exc:
            raise ValueError(f"external delegate {delegate} could not be loaded ({exc}); check the "
                             "library path and its options") from exc
        try:
            self._interpreter = module.Interpreter(
                model_content=content,
                num_threads=threads,
                experimental_delegates=delegates,
                experimental_op_resolver_type=getattr(module.OpResolverType, KERNELS[kernels]),
            )
            # Default delegates take over nodes at the first allocation; counted for info().
            self._interpreter.allocate_tensors()
            self._runner = self._interpreter.get_signature_runner(self.manifest["signature"])
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.path} could not be loaded by {self.backend} {self.backend_version} "
                                 f"({exc}); export it again") from exc
        ops = getattr(self._interpreter, "_get_ops_details", None)
        self.delegate_nodes: int | None = sum(op["op_name"] == "DELEGATE" for op in ops()) if ops else None
        self._lock = threading.Lock()
        self._input = self.manifest["input"]
        self._outputs = {o["key"]: o for o in self.manifest["outputs"]}
        self._check_signature()
        self.taps: dict[str, dict] = tap_entries(self.manifest)
        # A file converted elsewhere names its embedding output as its converter did.
        self.embedding_key: str | None = next(
            (o["key"] for o in self.manifest["outputs"] if o["kind"] == "embedding"), None)
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in self._input["shape"][1:])
        step = self._input["quantization_step"]
        self.input_scale: float | None = float(step["scale"]) if step else None

    def _check_signature(self) -> None:
        inputs = self._runner.get_input_details()
        outputs = self._runner.get_output_details()
        where = f"{self.manifest_path} does not describe {self.path}"
        if set(inputs) != {self._input["key"]}:
            raise ManifestError(f"{where}: model inputs {sorted(inputs)}, "
                                f"manifest input {self._input['key']!r}")
        if set(outputs) != set(self._outputs):
            raise ManifestError(f"{where}: model outputs {sorted(outputs)}, manifest outputs "
                                f"{sorted(self._outputs)}")
        declared = {k: o["dtype"] for k, o in self._outputs.items()}
        declared[self._input["key"]] = self._input["dtype"]
        for key, detail in {**inputs, **outputs}.items():
            actual = np.dtype(detail["dtype"]).name
            if actual != declared[key]:
                raise ManifestError(f"{where}: {key!r} is {actual} in the model, "
                                    f"{declared[key]} in the manifest")

    @property
    def output_keys(self) -> list[str]:
        return list(self._outputs)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Normalised float images (n, H, W, C) -> {signature key: dequantised float32 array}."""
        x = self._check_images(images)
        with self._lock:
            raw = self._runner(**{self._input["key"]: self._quantize(x)})
        return {key: _dequantize(raw[key], out) for key, out in self._outputs.items()}

    def _check_images(self, images) -> np.ndarray:
        x = np.asarray(images)
        shape = self.input_shape
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InputError(f"images have shape {x.shape}, "
                             f"this model takes (n, {', '.join(map(str, shape))})")
        if x.shape[0] == 0:
            raise InputError("empty batch: pass at least one image")
        if not np.issubdtype(x.dtype, np.floating):
            norm = self._input["normalization"]
            raise InputError(f"images are {x.dtype}; pass normalised float images "
                             f"(pixel - {norm['mean']}) / {norm['scale']}, {norm['channel_order']}")
        if not np.all(np.isfinite(x)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise InputError(f"images contain {bad} NaN/Inf values; the interpreter would return garbage")
        return x.astype(np.float32, copy=False)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype not in _INT_LIMITS:
            return np.ascontiguousarray(x, dtype=np.dtype(dtype))
        lo, hi = _INT_LIMITS[dtype]
        q = np.round(x / self._input["scale"]) + self._input["zero_point"]
        return np.clip(q, lo, hi).astype(dtype)

    def info(self) -> dict:
        """Everything that determines a result besides the model: runtime, kernels, threads, machine."""
        return {
            "runtime": self.backend,
            "runtime_version": self.backend_version,
            "kernels": self.kernels,
            "threads": self.threads,
            "delegate": self.delegate,
            "delegate_nodes": self.delegate_nodes,
            "machine": platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "model": self.manifest["model"],
            "variant": self.manifest["variant"],
            "role": self.manifest["role"],
            "sha256": self.manifest["sha256"],
        }

    def __repr__(self) -> str:
        return (f"Runtime({self.path.name}, {self.manifest['variant']}/{self.manifest['role']}, "
                f"{self.backend} {self.backend_version}, kernels={self.kernels}, threads={self.threads})")


def _dequantize(value: np.ndarray, out: dict) -> np.ndarray:
    if out["dtype"] in _INT_LIMITS:
        return (value.astype(np.float32) - np.float32(out["zero_point"])) * np.float32(out["scale"])
    # The signature runner hands back copies, so float outputs need no second one.
    return value.astype(np.float32, copy=False)

