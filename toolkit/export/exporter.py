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
from ..params import ParameterError
from ..zoo import get_tap, list_taps, tap_key, tap_model
from .calibration import calibration_sample
from .convert import convert, export_saved_model, keep_float_denylist, validate_recipes
from .graph import describe_io, float_tensor_names, integer_ops, xnnpack_int8_taps
from .provenance import source_entry
from .recipe import Recipe
from .verify import ExportVerificationError, verify_variant

VERIFY_IMAGES = 16


def file_name(variant: str, role: str) -> str:
    """``model.<variant>.tflite`` (deploy) or ``model.<variant>.probe.tflite``."""
    return f"model.{variant}.tflite" if role == "deploy" else f"model.{variant}.probe.tflite"


def export_model(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    variants: Sequence[str | Recipe] = ("float32", "int8"),
    calibration: np.ndarray | str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Path]]:
    """Export and verify; returns {variant: {"deploy": path, "probe": path}} (manifests beside them).

    ``variants``: recipes, or variant names for their default recipes. ``calibration``: uint8 training
    faces or a folder of identity folders, for recipes whose calibration names no folder. Files appear
    in ``out_dir`` only once every one of them passed verification.
    """
    model, meta = load_face_model(model_path)
    return export_keras(model, meta, out_dir, variants, calibration, source=Path(model_path),
                        progress=progress)


def calibration_faces(recipe: Recipe, size: int, supplied: np.ndarray | str | os.PathLike | None,
                      loaded: dict) -> np.ndarray | None:
    """The recipe's calibration draw (uint8 faces): from its own folder, else from ``supplied``.
    ``loaded`` caches folders across recipes."""
    cal = recipe.calibration
    source = cal.images if cal.images is not None else supplied
    if isinstance(source, (str, os.PathLike)):
        key = (str(source), cal.identities)
        if key not in loaded:
            from ..data import load_identity_folders

            if not Path(source).is_dir():
                raise FileNotFoundError(f"no calibration folder at {source}: pass a folder of identity "
                                        "folders of training faces")
            loaded[key] = load_identity_folders(source, image_size=size, progress=False,
                                                identities=cal.identities).images
        source = loaded[key]
    return calibration_sample(source, size, cal.count, cal.seed)


def export_keras(
    model: keras.Model,
    meta: dict,
    out_dir: str | os.PathLike,
    variants: Sequence[str | Recipe] = ("float32", "int8"),
    calibration: np.ndarray | str | os.PathLike | None = None,
    source: Path | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Path]]:
    """`export_model` for an in-memory model and its metadata (as `load_face_model` returns them)."""
    recipes = validate_recipes(variants)
    for recipe in recipes:
        for tap in recipe.precision:
            try:
                get_tap(model, tap)
            except KeyError as exc:
                raise ValueError(f"recipe precision: {exc.args[0]}") from None
    norm = meta["normalization"]
    size = int(model.input_shape[1])
    loaded: dict = {}
    samples = {}
    for recipe in recipes:
        if recipe.calibrated:
            sample = calibration_faces(recipe, size, calibration, loaded)
            if sample is None:
                raise ParameterError("calibration", f"{recipe.variant} needs calibration images: pass "
                                                    "{name} (a folder of identity folders of training faces)")
            samples[recipe.variant] = normalize(sample, norm)
    first = next(iter(samples.values()), None)
    images = first[:VERIFY_IMAGES] if first is not None else _noise_images(model, norm, 0)
    probe = tap_model(model)
    deploy = keras.Model(model.input, {"embedding": model.output}, name=f"{model.name}_deploy")
    reference = {k: np.asarray(v) for k, v in probe(images, training=False).items()}
    origin = source_entry(model, source)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ParameterError("out_dir", f"{{name}} {out} is a file; name a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        saved = {role: export_saved_model(km, staging / f"saved_{role}")
                 for role, km in (("deploy", deploy), ("probe", probe))}
        staged: dict[str, dict[str, Path]] = {}
        failures: list[str] = []
        bar = tqdm(total=2 * len(recipes), desc="converting", unit="file", disable=not progress, leave=False)
        for recipe in recipes:
            variant = recipe.variant
            staged[variant] = {}
            for role, km in (("deploy", deploy), ("probe", probe)):
                bar.set_postfix_str(file_name(variant, role))
                denylist = keep_float_denylist(km, recipe.keep_float) if variant == "int8" else None
                content, options = convert(saved[role], recipe, samples.get(variant), denylist)
                if variant == "int8" and role == "probe":
                    content, options["tap_exposure"] = xnnpack_int8_taps(
                        content, [tap_key(t.name) for t in list_taps(model)])
                path = staging / file_name(variant, role)
                atomic.write_bytes(path, content)
                if recipe.keep_float and not float_tensor_names(content, options["float_nodes"]):
                    failures.append(f"{variant} {role}: keep-float left no float tensors")
                # Only a recipe with float op kinds (int8 only) pays for reading the graph back.
                left = integer_ops(content, recipe.float_ops) if recipe.float_ops else []
                if left:
                    failures.append(f"{variant} {role}: float_ops left {len(left)} op(s) quantized, "
                                    f"e.g. {left[0]}")
                manifest = build_manifest(model, meta, recipe, role, path, content, options, origin)
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


def build_manifest(model: keras.Model, meta: dict, recipe: Recipe, role: str, path: Path, content: bytes,
                   options: dict, source: dict) -> dict:
    """The manifest (schema faceprobe.manifest/1) of one converted file."""
    io = describe_io(content)
    variant = recipe.variant
    keep_float = recipe.keep_float if variant == "int8" else []
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
        "source": source,
        "signature": io["signature"],
        "input": {**io["input"], "normalization": meta["normalization"]},
        "outputs": outputs,
        "keep_float": keep_float,
        "recipe": recipe.to_dict(),
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

