"""`export_model`: a trained `model.keras` -> deploy and probe `.tflite` per variant, with manifests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from device.manifest import MANIFEST_SCHEMA, load_manifest, manifest_path_for, sha256_file, validate_manifest

from .. import atomic
from ..data.normalize import normalize, valid_range
from ..modelfile import load_face_model
from ..zoo import get_tap, list_taps, tap_key, tap_model
from .calibration import DEFAULT_CALIBRATION_SIZE, calibration_sample
from .convert import check_variants, convert, export_saved_model, keep_float_denylist
from .graph import describe_io, float_tensor_names, xnnpack_int8_taps
from .verify import ExportVerificationError, verify_variant

VERIFY_IMAGES = 16


def file_name(variant: str, role: str) -> str:
    """``model.<variant>.tflite`` (deploy) or ``model.<variant>.probe.tflite``."""
    return f"model.{variant}.tflite" if role == "deploy" else f"model.{variant}.probe.tflite"


def export_model(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    variants: Sequence[str] = ("float32", "int8"),
    calibration: np.ndarray | str | os.PathLike | None = None,
    keep_float: Sequence[str] = (),
    int8_io: bool = False,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Path]]:
    """Export and verify; returns {variant: {"deploy": path, "probe": path}} (manifests beside them).

    ``calibration``: uint8 training faces or a folder of identity folders (needed for int8).
    ``keep_float``: tap names whose blocks stay float in int8. Files appear in ``out_dir`` only once
    every one of them passed verification.
    """
    model, meta = load_face_model(model_path)
    return export_keras(model, meta, out_dir, variants, calibration, keep_float, int8_io, calibration_size,
                        seed, source=Path(model_path), progress=progress)


def export_keras(
    model: keras.Model,
    meta: dict,
    out_dir: str | os.PathLike,
    variants: Sequence[str] = ("float32", "int8"),
    calibration: np.ndarray | str | os.PathLike | None = None,
    keep_float: Sequence[str] = (),
    int8_io: bool = False,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = 0,
    source: Path | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Path]]:
    """`export_model` for an in-memory model and its metadata (as `load_face_model` returns them)."""
    variants = check_variants(variants)
    keep_float = list(dict.fromkeys(keep_float))
    for tap in keep_float:
        get_tap(model, tap)
    if keep_float and "int8" not in variants:
        raise ValueError("--keep-float applies to the int8 variant; add int8 to the variants")
    if int8_io and "int8" not in variants:
        raise ValueError("--int8-io applies to the int8 variant; add int8 to the variants")
    norm = meta["normalization"]
    size = int(model.input_shape[1])
    sample = calibration_sample(calibration, size, calibration_size, seed)
    if "int8" in variants and sample is None:
        raise ValueError("int8 needs calibration images: pass --calibration DIR (a folder of identity "
                         "folders of training faces)")
    cal = normalize(sample, norm) if sample is not None else None
    images = cal[:VERIFY_IMAGES] if cal is not None else _noise_images(model, norm, seed)
    probe = tap_model(model)
    deploy = keras.Model(model.input, {"embedding": model.output}, name=f"{model.name}_deploy")
    reference = {k: np.asarray(v) for k, v in probe(images, training=False).items()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        saved = {role: export_saved_model(km, staging / f"saved_{role}")
                 for role, km in (("deploy", deploy), ("probe", probe))}
        denylists = {"deploy": keep_float_denylist(deploy, keep_float),
                     "probe": keep_float_denylist(probe, keep_float)}
        staged: dict[str, dict[str, Path]] = {}
        failures: list[str] = []
        bar = tqdm(total=2 * len(variants), desc="converting", unit="file", disable=not progress, leave=False)
        for variant in variants:
            staged[variant] = {}
            for role in ("deploy", "probe"):
                bar.set_postfix_str(file_name(variant, role))
                content, options = convert(saved[role], variant, cal, int8_io and variant == "int8",
                                           denylists[role] if variant == "int8" else None)
                if variant == "int8" and role == "probe":
                    content, options["tap_exposure"] = xnnpack_int8_taps(
                        content, [tap_key(t.name) for t in list_taps(model)])
                path = staging / file_name(variant, role)
                atomic.write_bytes(path, content)
                kept = keep_float if variant == "int8" else []
                if kept and not float_tensor_names(content, options["float_nodes"]):
                    failures.append(f"{variant} {role}: --keep-float left no float tensors")
                manifest = build_manifest(model, meta, variant, role, path, content, options, kept, source)
                atomic.write_json(manifest_path_for(path), manifest)
                staged[variant][role] = path
                bar.update()
            report, problems = verify_variant(variant, staged[variant], images, reference)
            failures += problems
            for path in staged[variant].values():
                manifest = load_manifest(manifest_path_for(path))
                manifest["verification"] = report
                atomic.write_json(manifest_path_for(path), manifest)
        bar.close()
        if failures:
            raise ExportVerificationError("export failed verification, nothing written:\n  "
                                          + "\n  ".join(failures))
        result = {}
        for variant, roles in staged.items():
            result[variant] = {}
            for role, path in roles.items():
                final = out / path.name
                # Manifest last: a reader that finds a manifest finds the file it describes.
                os.replace(path, final)
                os.replace(manifest_path_for(path), manifest_path_for(final))
                result[variant][role] = final
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_manifest(model: keras.Model, meta: dict, variant: str, role: str, path: Path, content: bytes,
                   options: dict, keep_float: list[str], source: Path | None) -> dict:
    """The manifest (schema faceprobe.manifest/1) of one converted file."""
    io = describe_io(content)
    taps = {tap_key(t.name): t for t in list_taps(model)}
    outputs = []
    for key, entry in io["outputs"].items():
        tap = taps.get(key)
        head = {"key": key, "kind": "tap" if tap else "embedding"}
        if tap:
            head.update(tap=tap.name, stage=tap.stage, channels=tap.channels, stride=tap.stride,
                        receptive_field=tap.receptive_field, kept_float=tap.name in keep_float)
        outputs.append({**head, **entry})
    # Embedding first, then taps in depth order.
    order = ["embedding", *taps]
    outputs.sort(key=lambda o: order.index(o["key"]) if o["key"] in order else len(order))
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "model": meta.get("name", model.name),
        "architecture": meta.get("architecture", model.name),
        "variant": variant,
        "role": role,
        "file": path.name,
        "sha256": sha256_file(path),
        "bytes": len(content),
        "source": {"file": source.name, "sha256": sha256_file(source)} if source else None,
        "signature": io["signature"],
        "input": {**io["input"], "normalization": meta["normalization"]},
        "outputs": outputs,
        "keep_float": keep_float,
        "converter": {
            "path": "keras.Model.export + tf.lite.TFLiteConverter.from_saved_model",
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "options": options,
        },
    }
    return validate_manifest(manifest, f"manifest of {path.name}")


def _noise_images(model: keras.Model, norm: dict, seed: int) -> np.ndarray:
    # Without calibration faces, uniform pixels still exercise every output for the numeric checks.
    lo, hi = valid_range(norm)
    rng = np.random.default_rng(seed)
    return rng.uniform(lo, hi, (VERIFY_IMAGES, *model.input_shape[1:])).astype(np.float32)

