"""Comparisons of tensors and of probe results: cosine, correlation, and one ascent against another.

Used by emergence (snapshots against each other), the findings (visualisations against controls), the
board comparison of ``faceprobe probe --agent`` and the pre-release check (float against quantized).
"""

from __future__ import annotations

import numpy as np

from device.plan import ProbePlan, ProbeResult


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flattened tensors (1.0 for two zero tensors)."""
    a = np.ravel(np.asarray(a, np.float64))
    b = np.ravel(np.asarray(b, np.float64))
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / max(na * nb, 1e-30))


def rows_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row of two (n, ...) arrays."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return np.sum(a * b, axis=1) / den


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flattened tensors (0.0 when either is constant)."""
    a = np.ravel(np.asarray(a, np.float64))
    b = np.ravel(np.asarray(b, np.float64))
    a, b = a - a.mean(), b - b.mean()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def compare_ascents(plan: ProbePlan, reference: ProbeResult, test: ProbeResult) -> list[dict]:
    """Per target (mean over images): correlation of the final images and of their change from the start,
    the objective gain of ``test`` relative to ``reference``, and the cosine of the gradient estimates at
    the start image (``gradient_cosine``: both runs at the same point, with the same perturbations) and
    averaged over the steps (``gradient_cosine_steps``: later steps sit where the two ascents have
    taken the image, which drifts apart at deep taps)."""
    rows = []
    for j, target in enumerate(plan.targets):
        img_corr, change_corr, grad_start, grad_cos = [], [], [], []
        for i, start in enumerate(plan.images):
            img_corr.append(correlation(reference.final_images[i, j], test.final_images[i, j]))
            change_corr.append(correlation(reference.final_images[i, j] - start,
                                           test.final_images[i, j] - start))
            if reference.gradients is not None and test.gradients is not None:
                per_step = rows_cosine(reference.gradients[i, j], test.gradients[i, j])
                grad_start.append(float(per_step[0]))
                grad_cos.append(float(np.mean(per_step)))
        gain_ref = float(np.mean(reference.gain[:, j]))
        rows.append({**target, "image_correlation": float(np.mean(img_corr)),
                     "change_correlation": float(np.mean(change_corr)),
                     "gradient_cosine": float(np.mean(grad_start)) if grad_start else None,
                     "gradient_cosine_steps": float(np.mean(grad_cos)) if grad_cos else None,
                     "gain_reference": gain_ref, "gain_test": float(np.mean(test.gain[:, j])),
                     "gain_ratio": float(np.mean(test.gain[:, j]) / gain_ref) if gain_ref else None})
    return rows
