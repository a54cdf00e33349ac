"""Load every exported file through the board's runtime and check it against Keras; fail loudly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.runtime import Runtime

# Float32 TFLite vs Keras, per output: max |difference| / max |Keras value|.
KERAS_REL_TOLERANCE = 1e-4
# Deploy vs probe embeddings of the same variant: the lowest cosine over the verification images.
# Exposing taps changes int8 calibration ranges (pre-activation instead of post-ReLU), hence int8's
# looser bound (untrained mobilefacenet, synthetic faces: 0.97 at 112 px, 0.86 at 32 px).
AGREEMENT_COSINE = {"float32": 0.99999, "float16": 0.9999, "dynamic_int8": 0.999, "int8": 0.8,
                    "int16x8": 0.99}


class ExportVerificationError(RuntimeError):
    """An exported file lost a tap, disagrees with Keras, or its two roles disagree."""


def rel_error(actual: np.ndarray, reference: np.ndarray) -> float:
    scale = float(np.max(np.abs(reference)))
    return float(np.max(np.abs(actual - reference)) / max(scale, 1e-12))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(num / np.maximum(den, 1e-30)))


def verify_variant(variant: str, files: dict[str, Path], images: np.ndarray,
                   reference: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """Check one variant's deploy and probe files; returns (numbers for the manifest, failures)."""
    failures: list[str] = []
    outs = {role: Runtime(path).run(images) for role, path in files.items()}
    probe, deploy = outs["probe"], outs["deploy"]
    if set(deploy) != {"embedding"}:
        failures.append(f"{variant} deploy outputs {sorted(deploy)}, expected only 'embedding'")
    missing = sorted(set(reference) - set(probe))
    if missing:
        failures.append(f"{variant} probe model lost outputs {missing}")
    for role, out in outs.items():
        for key, value in out.items():
            if not np.all(np.isfinite(value)):
                failures.append(f"{variant} {role} output {key!r} has NaN/Inf values")
    for key in set(reference) & set(probe):
        if probe[key].shape != reference[key].shape:
            failures.append(f"{variant} probe output {key!r} has shape {probe[key].shape}, "
                            f"Keras gives {reference[key].shape}")
    if failures:
        return {}, failures
    report = {
        "images": int(len(images)),
        "keras_rel_error": {k: rel_error(probe[k], reference[k]) for k in reference},
        "deploy_keras_rel_error": rel_error(deploy["embedding"], reference["embedding"]),
        "embedding_cosine_vs_keras": min_cosine(probe["embedding"], reference["embedding"]),
        "deploy_probe_cosine": min_cosine(deploy["embedding"], probe["embedding"]),
        "deploy_probe_rel_error": rel_error(deploy["embedding"], probe["embedding"]),
        "tolerance": {"deploy_probe_cosine": AGREEMENT_COSINE[variant]},
    }
    if variant == "float32":
        report["tolerance"]["keras_rel_error"] = KERAS_REL_TOLERANCE
        errors = {**report["keras_rel_error"], "deploy embedding": report["deploy_keras_rel_error"]}
        for key, err in errors.items():
            if err > KERAS_REL_TOLERANCE:
                failures.append(f"float32 {key} differs from Keras by {err:.2e} of its range "
                                f"(tolerance {KERAS_REL_TOLERANCE:.0e})")
    if report["deploy_probe_cosine"] < AGREEMENT_COSINE[variant]:
        failures.append(f"{variant} deploy and probe embeddings disagree: cosine "
                        f"{report['deploy_probe_cosine']:.5f} < {AGREEMENT_COSINE[variant]}")
    return report, failures
