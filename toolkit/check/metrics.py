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
