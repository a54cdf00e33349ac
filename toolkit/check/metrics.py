"""Error figures between a float reference and a quantized result."""

from __future__ import annotations

import numpy as np


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = np.asarray(ref, np.float64)
    noise = np.sum((ref - np.asarray(test, np.float64)) ** 2)
    signal = np.sum(ref**2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


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


def rmse_over_scale(ref: np.ndarray, test: np.ndarray, scale: float | None) -> float | None:
    """RMSE divided by the tensor's quantization step (~0.29 is ideal uniform rounding: 1/sqrt(12))."""
    if not scale:
        return None
    diff = np.asarray(ref, np.float64) - np.asarray(test, np.float64)
    return float(np.sqrt(np.mean(diff**2)) / scale)


class ErrorSums:
    """Running sums that give SQNR, cosine and RMSE/scale over batches without holding them all."""

    def __init__(self) -> None:
        self.ref2 = self.test2 = self.cross = self.diff2 = 0.0
        self.count = 0

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        ref = np.asarray(ref, np.float64).ravel()
        test = np.asarray(test, np.float64).ravel()
        self.ref2 += float(ref @ ref)
        self.test2 += float(test @ test)
        self.cross += float(ref @ test)
        self.diff2 += float((ref - test) @ (ref - test))
        self.count += ref.size

    def result(self, scale: float | None = None) -> dict:
        """sqnr_db, cosine, rmse_over_scale (None without a scale) and the noise-to-signal ratio."""
        den = np.sqrt(self.ref2 * self.test2)
        return {
            "sqnr_db": float("inf") if self.diff2 == 0 else float(10 * np.log10(max(self.ref2, 1e-30)
                                                                                 / self.diff2)),
            "cosine": 1.0 if den == 0 else float(self.cross / den),
            "rmse_over_scale": float(np.sqrt(self.diff2 / self.count) / scale) if scale else None,
            "noise_to_signal": float(self.diff2 / max(self.ref2, 1e-30)),
        }


def tap_errors(ref: np.ndarray, test: np.ndarray, scale: float | None = None) -> dict:
    """All per-tap figures of the check for one pair of tensors."""
    sums = ErrorSums()
    sums.add(ref, test)
    return sums.result(scale)
