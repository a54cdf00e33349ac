"""Emergence during training: when does each stage's visualisation settle?

``EmergenceCallback`` re-runs one fixed plan (the stage taps, fixed channels, fixed start images) every
``every`` training iterations (batches), saving each snapshot's changes (final - start image). At the end
of training, per stage, it correlates every snapshot's visualisation (the stage's changes, concatenated)
with the final one (Pearson) and records the first iteration from which the correlation stays at or above
``threshold`` for every later snapshot: the stage's emergence iteration (None when no snapshot before the
final one qualifies). The method reports about
20 / 100 / 200 iterations for the first / middle / last stage.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import keras
import numpy as np

from device.plan import ProbePlan

from ..atomic import write_bytes, write_json
from ..data.normalize import normalize
from ..zoo import list_taps
from .ascent import Ascender
from .compare import correlation
from .plans import resolve_taps, stage_of


def fixed_channels(n_channels: int, k: int) -> list[int]:
    """``k`` channels evenly spread over 0..n_channels-1: independent of the (changing) weights."""
    return sorted({int(c) for c in np.round(np.linspace(0, n_channels - 1, min(k, n_channels)))})


def stable_from(iterations: list[int], correlations: list[float], threshold: float) -> int | None:
    """First iteration from which every later correlation is >= threshold; None when only the final
    snapshot (correlated with itself) qualifies, i.e. the stage had not settled before the end."""
    first = None
    for it, c in zip(reversed(iterations[:-1]), reversed(correlations[:-1]), strict=True):
        if c < threshold:
            break
        first = it
    return first


class EmergenceCallback(keras.callbacks.Callback):
    """Probe a fixed plan every ``every`` training iterations; write ``out_dir/emergence.json`` at the end."""

    def __init__(self, embedding_model: keras.Model, images_uint8: np.ndarray, every: int,
                 out_dir: str | os.PathLike, threshold: float = 0.9, channels_per_stage: int = 5,
                 max_images: int = 2, steps: int = 20, step_size: float = 1.0, step_rule: str = "raw"):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"every must be a positive number of iterations, got {every!r}")
        images = np.asarray(images_uint8)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise ValueError(f"images_uint8 must be (n, H, W, 3) uint8 faces, got shape {images.shape}")
        self.embedding_model = embedding_model
        self.every = int(every)
        self.out_dir = Path(out_dir)
        self.threshold = float(threshold)
        taps = {t.name: t for t in list_taps(embedding_model)}
        self.taps = resolve_taps(embedding_model)
        self.stages = stage_of(embedding_model)
        targets = [{"tap": t, "channel": c} for t in self.taps
                   for c in fixed_channels(taps[t].channels, channels_per_stage)]
        self.plan = ProbePlan(targets=targets, images=normalize(images[:max_images]), steps=int(steps),
                              step_size=float(step_size), step_rule=step_rule)
        self.iteration = 0
        self.snapshots: list[int] = []
        self.result: dict | None = None
        self._ascender: Ascender | None = None

    def _snapshot(self) -> None:
        if self._ascender is None:
            self._ascender = Ascender(self.embedding_model, self.plan)
        result = self._ascender.run()
        delta = (result.final_images - self.plan.images[:, None]).astype(np.float16)
        buf = io.BytesIO()
        np.savez_compressed(buf, delta=delta, objective=result.objective)
        write_bytes(self.out_dir / "snapshots" / f"iter_{self.iteration:07d}.npz", buf.getvalue())
        self.snapshots.append(self.iteration)

    def _load(self, iteration: int) -> np.ndarray:
        with np.load(self.out_dir / "snapshots" / f"iter_{iteration:07d}.npz") as z:
            return z["delta"].astype(np.float32)

    def on_train_begin(self, logs=None) -> None:
        if not self.snapshots:
            self._snapshot()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.iteration += 1
        if self.iteration % self.every == 0:
            self._snapshot()

    def on_train_end(self, logs=None) -> None:
        if not self.snapshots or self.snapshots[-1] != self.iteration:
            self._snapshot()
        self.result = self.summarise()
        write_json(self.out_dir / "emergence.json", self.result)

    def summarise(self) -> dict:
        """Per stage: correlations of each snapshot with the last, and the emergence iteration."""
        final = self._load(self.snapshots[-1])
        by_stage: dict[str, list[int]] = {}
        for j, t in enumerate(self.plan.targets):
            by_stage.setdefault(self.stages[t["tap"]], []).append(j)
        corr: dict[str, list[float]] = {s: [] for s in by_stage}
        for it in self.snapshots:
            delta = self._load(it)
            for s, idx in by_stage.items():
                corr[s].append(correlation(delta[:, idx], final[:, idx]))
        return {
            "every": self.every,
            "threshold": self.threshold,
            "iterations": self.snapshots,
            "plan": self.plan.to_json(),
            "stages": {s: {"taps": sorted({self.plan.targets[j]["tap"] for j in idx}),
                           "channels": [self.plan.targets[j]["channel"] for j in idx],
                           "correlations": corr[s],
                           "stable_from": stable_from(self.snapshots, corr[s], self.threshold)}
                       for s, idx in by_stage.items()},
        }
