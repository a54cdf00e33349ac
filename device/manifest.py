"""The manifest beside every exported `.tflite`: what the board needs to run and read the model.

Schema ``faceprobe.manifest/1`` (JSON)::

    schema, model, architecture, variant, role ("deploy" | "probe"), file, sha256, bytes, source, signature,
    input:   {key, shape, dtype, scale, zero_point, quantization_step, normalization}
    outputs: [{key, kind ("embedding" | "tap"), tap, stage, channels, stride, receptive_field,
               shape, dtype, scale, zero_point, int8}]
    keep_float, converter, verification

``scale``/``zero_point`` describe the tensor as the interpreter exchanges it (None for float).
``input.quantization_step`` is the input quantisation ({scale, zero_point} in normalised units) of an
int8 model even when its input is float: the first QUANTIZE op's output. ``outputs[].int8`` is the
int8 quantisation of that tensor inside an int8 model (for float outputs: the input of the final
DEQUANTIZE), used to count values at the int8 limits.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .fields import is_int, is_number, require, require_type

MANIFEST_SCHEMA = "faceprobe.manifest/1"
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite
ROLES = ("deploy", "probe")
OUTPUT_KINDS = ("embedding", "tap")
_REQUIRED = ("schema", "model", "variant", "role", "sha256", "signature", "input", "outputs")
_INPUT_REQUIRED = ("key", "shape", "dtype", "scale", "zero_point", "quantization_step", "normalization")
_OUTPUT_REQUIRED = ("key", "kind", "shape", "dtype", "scale", "zero_point", "int8")
_TAP_REQUIRED = ("tap", "stage", "channels", "stride", "receptive_field")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, of another schema or inconsistent."""


class ModelFileError(ValueError):
    """A model file that is missing, truncated, corrupt, foreign, or does not match its manifest."""


def manifest_path_for(tflite_path: str | os.PathLike) -> Path:
    """``model.int8.probe.tflite`` -> ``model.int8.probe.manifest.json`` (same folder)."""
    p = Path(tflite_path)
    return p.with_name(p.name.removesuffix(".tflite") + ".manifest.json")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_tflite_bytes(data: bytes, name: str = "model") -> None:
    """Refuse bytes that are not a TFLite flatbuffer (checks the ``TFL3`` identifier)."""
    if len(data) < 8:
        raise ModelFileError(f"{name} is {len(data)} bytes long: truncated or empty, not a .tflite file; "
                             "export it again with `faceprobe export`")
    if data[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{name} is not a TFLite model (flatbuffer identifier {data[4:8]!r}, expected "
                             f"{TFLITE_IDENTIFIER!r}); pass a .tflite written by `faceprobe export`")


def read_tflite(path: str | os.PathLike, manifest: dict | None = None) -> bytes:
    """Read a `.tflite`, check it is one, and (given its manifest) that its sha256 matches."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"no model file at {p}: pass the .tflite written by `faceprobe export`")
    data = p.read_bytes()
    validate_tflite_bytes(data, str(p))
    if manifest is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != manifest["sha256"]:
            raise ModelFileError(f"{p} does not match its manifest (sha256 {actual[:12]}… != "
                                 f"{manifest['sha256'][:12]}…): the file was changed or truncated, or the "
                                 "manifest belongs to another export; export again")
    return data


def validate_manifest(manifest: dict, source: str = "manifest") -> dict:
    """Check the schema and the fields the board relies on; returns the manifest unchanged."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{source} is not a JSON object")
    schema = manifest.get("schema")
    if schema != MANIFEST_SCHEMA:
        raise ManifestError(f"{source} has schema {schema!r}, this runtime reads {MANIFEST_SCHEMA!r}; "
                            "export the model again with a matching faceprobe")
    _require(manifest, _REQUIRED, source)
    for key in ("model", "variant", "role", "sha256", "signature"):
        _typed(manifest[key], str, f"{source}: {key}", "a string")
    if manifest["role"] not in ROLES:
        raise ManifestError(f"{source}: role {manifest['role']!r} is not one of {ROLES}")
    _require(manifest["input"], _INPUT_REQUIRED, f"{source} input")
    _check_tensor(manifest["input"], f"{source} input")
    if manifest["input"]["quantization_step"] is not None:
        _typed(manifest["input"]["quantization_step"], dict, f"{source} input.quantization_step",
               "{scale: number, zero_point: number} or null", _is_quantization)
    _typed(manifest["input"]["normalization"], dict, f"{source} input.normalization", "an object")
    _typed(manifest["outputs"], list, f"{source}: outputs", "a list")
    if not manifest["outputs"]:
        raise ManifestError(f"{source} lists no outputs")
    keys = set()
    for out in manifest["outputs"]:
        _require(out, _OUTPUT_REQUIRED, f"{source} output")
        _check_tensor(out, f"{source} output")
        if out["kind"] not in OUTPUT_KINDS:
            raise ManifestError(f"{source}: output {out['key']!r} has kind {out['kind']!r}, "
                                f"expected one of {OUTPUT_KINDS}")
        if out["kind"] == "tap":
            _require(out, _TAP_REQUIRED, f"{source} tap output {out['key']!r}")
            _typed(out["tap"], str, f"{source}: output {out['key']!r} tap", "a string")
            _typed(out["channels"], int, f"{source}: output {out['key']!r} channels", "a positive integer",
                   lambda v: 0 < v <= MAX_DIM)
        if out["key"] in keys:
            raise ManifestError(f"{source}: output key {out['key']!r} appears twice")
        keys.add(out["key"])
    return manifest


def load_manifest(path: str | os.PathLike) -> dict:
    """Read and validate a manifest file."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"no manifest at {p}: every .tflite needs the <stem>.manifest.json that "
                            "`faceprobe export` writes beside it")
    try:
        manifest = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{p} is not valid JSON ({exc}); export the model again") from exc
    return validate_manifest(manifest, str(p))


def tap_entries(manifest: dict) -> dict[str, dict]:
    """Tap name -> output entry, in the manifest's (depth) order."""
    return {o["tap"]: o for o in manifest["outputs"] if o["kind"] == "tap"}


MAX_DIM = 1 << 20  # no tensor dimension of a face model comes near this
_DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32")


def _typed(value, kind: type, where: str, want: str, ok=lambda v: True) -> None:
    require_type(value, kind, where, want, ok, ManifestError)


def _is_quantization(value: dict) -> bool:
    return is_number(value.get("scale")) and value["scale"] > 0 and is_number(value.get("zero_point"))


def _check_tensor(entry: dict, where: str) -> None:
    """Types of the fields every tensor entry (input or output) shares."""
    _typed(entry["key"], str, f"{where} key", "a string")
    where = f"{where} {entry['key']!r}"
    _typed(entry["dtype"], str, f"{where} dtype", f"one of {_DTYPES}", lambda v: v in _DTYPES)
    _typed(entry["shape"], list, f"{where} shape", "a list of positive integers (null first)",
           lambda v: 1 <= len(v) <= 8 and all(
               (d is None and i == 0) or (is_int(d) and 0 < d <= MAX_DIM)
               for i, d in enumerate(v)))
    for key in ("scale", "zero_point"):
        require(entry[key] is None or is_number(entry[key]), f"{where} {key}", "a finite number or null",
                entry[key], ManifestError)
    quant = entry.get("int8")
    if quant is not None:
        _typed(quant, dict, f"{where} int8", "{scale: number, zero_point: number} or null",
               _is_quantization)


def _require(obj: dict, fields: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where} is not a JSON object")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise ManifestError(f"{where} lacks {', '.join(missing)}; export the model again")
