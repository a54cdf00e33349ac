"""Emergence during training: when does each stage's visualisation leave what an untrained network gives?

``EmergenceCallback`` re-runs one fixed plan (the stage taps, channels evenly spread over each tap so the
choice does not depend on the changing weights, fixed start images, the method's ascent) at the start of
training, every ``every`` training iterations (batches) and at the end, saving each snapshot's changes
(final - start image, float32). Iterations count from the optimizer's, so they continue across a resumed
run; ``finalize(model)`` replaces the last snapshot by one of the model as saved (after batch-norm
re-estimation), which ``toolkit.train`` calls.

Per stage and snapshot, the change's frequency centroid and colour share (``toolkit.probe.findings``) are
compared with the **untrained null band**: the same plan on the same architecture freshly initialised
(``seeds``), mean +- the half-width of the 95 % prediction interval of one more untrained network. The
stage's **onset** is the first snapshot iteration from which every later snapshot lies outside the band
in either statistic, at least ``persist`` snapshots in a row to the end; a crossing is located to within
one snapshot interval whatever the interval. Verdict per stage: reproduced (an onset), not reproduced (the
final snapshot is inside the band), inconclusive (outside at the end but not for ``persist`` snapshots, or
back and forth). The method reports onsets of about 20 / 100 / 200 iterations for first / middle / last;
``order`` says whether the onsets grow with depth. Also recorded, for reading the curves: each snapshot's
correlation with the final one (settling, not onset).
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
from . import controls
from .affine import excluded_stages
from .ascent import Ascender
from .compare import correlation
from .findings import colour_share, frequency_centroid
from .plans import resolve_taps, stage_of

STATISTICS = ("frequency_centroid", "colour_share")
SNAPSHOT = "iter_{:07d}.npz"


def fixed_channels(n_channels: int, k: int) -> list[int]:
    """``k`` channels evenly spread over 0..n_channels-1: independent of the (changing) weights."""
    return sorted({int(c) for c in np.round(np.linspace(0, n_channels - 1, min(k, n_channels)))})


def onset(iterations: list[int], outside: list[bool], persist: int = 2) -> int | None:
    """First iteration from which every later snapshot is ``outside`` the null band, provided at least
    ``persist`` snapshots are; None otherwise."""
    run = 0
    for flag in reversed(outside):
        if not flag:
            break
        run += 1
    return iterations[len(iterations) - run] if run >= max(1, persist) else None


def settled_from(iterations: list[int], correlations: list[float], threshold: float) -> int | None:
    """First iteration from which every later correlation with the final snapshot is >= threshold; None
    when only the final snapshot (correlated with itself) qualifies."""
    first = None
    for it, c in zip(reversed(iterations[:-1]), reversed(correlations[:-1]), strict=True):
        if c < threshold:
            break
        first = it
    return first


def change_statistics(delta: np.ndarray) -> dict[str, np.ndarray]:
    """(n, targets, H, W, C) changes -> statistic -> (n, targets)."""
    flat = delta.reshape(-1, *delta.shape[2:])
    return {"frequency_centroid": frequency_centroid(flat).reshape(delta.shape[:2]),
            "colour_share": colour_share(flat).reshape(delta.shape[:2])}


def stage_verdict(outside: list[bool], start: int | None) -> str:
    """See the module docstring."""
    if start is not None:
        return "reproduced"
    return "not reproduced" if not outside[-1] else "inconclusive"


def depth_order(onsets: dict[str, int | None]) -> str:
    """Whether the onsets grow with depth: reproduced / not reproduced / inconclusive (a stage without)."""
    values = list(onsets.values())
    if any(v is None for v in values):
        return "inconclusive"
    return "reproduced" if values == sorted(values) else "not reproduced"


class EmergenceCallback(keras.callbacks.Callback):
    """Probe a fixed plan every ``every`` training iterations; write ``out_dir/emergence.json`` at the end."""

    def __init__(self, embedding_model: keras.Model, images_uint8: np.ndarray, every: int,
                 out_dir: str | os.PathLike, threshold: float = 0.9, channels_per_stage: int = 5,
                 max_images: int = 2, steps: int = 20, step_size: float = 1.0, step_rule: str = "raw",
                 seeds: tuple[int, ...] = controls.SEEDS, persist: int = 2):
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
        self.seeds = tuple(seeds)
        self.persist = int(persist)
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
        self._null: list[dict[str, np.ndarray]] | None = None

    def _path(self, iteration: int) -> Path:
        return self.out_dir / "snapshots" / SNAPSHOT.format(iteration)

    def _snapshot(self, model: keras.Model | None = None) -> None:
        if model is None:
            if self._ascender is None:
                self._ascender = Ascender(self.embedding_model, self.plan)
            result = self._ascender.run()
        else:
            result = Ascender(model, self.plan).run()
        delta = (result.final_images - self.plan.images[:, None]).astype(np.float32)
        buf = io.BytesIO()
        np.savez_compressed(buf, delta=delta, objective=result.objective)
        write_bytes(self._path(self.iteration), buf.getvalue())
        if not self.snapshots or self.snapshots[-1] != self.iteration:
            self.snapshots.append(self.iteration)

    def _load(self, iteration: int) -> np.ndarray:
        with np.load(self._path(iteration)) as z:
            return z["delta"].astype(np.float32)

    def on_train_begin(self, logs=None) -> None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            self.iteration = int(keras.ops.convert_to_numpy(optimizer.iterations))
        # A resumed run keeps the snapshots it took up to where it resumes.
        folder = self.out_dir / "snapshots"
        taken = sorted(int(p.stem[5:]) for p in folder.glob("iter_*.npz")) if folder.is_dir() else []
        self.snapshots = [it for it in taken if it < self.iteration]
        self._snapshot()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.iteration += 1
        if self.iteration % self.every == 0:
            self._snapshot()

    def on_train_end(self, logs=None) -> None:
        if not self.snapshots or self.snapshots[-1] != self.iteration:
            self._snapshot()
        self._write()

    def finalize(self, model: keras.Model) -> None:
        """Replace the last snapshot by one of ``model`` (the network as saved) and rewrite the summary."""
        if not self.snapshots:
            return
        self.iteration = self.snapshots[-1]
        self._snapshot(model)
        self._write()

    def _write(self) -> None:
        self.result = self.summarise()
        write_json(self.out_dir / "emergence.json", self.result)

    def null_statistics(self) -> list[dict[str, np.ndarray]]:
        """The plan's change statistics on each untrained copy (computed once)."""
        if self._null is None:
            self._null = []
            for copy in controls.untrained_copies(self.embedding_model, self.seeds):
                result = Ascender(copy, self.plan).run()
                self._null.append(change_statistics(result.final_images - self.plan.images[:, None]))
        return self._null

    def summarise(self) -> dict:
        """Per stage: statistics per snapshot, the null band, onset and verdict; the finding with controls."""
        by_stage: dict[str, list[int]] = {}
        for j, t in enumerate(self.plan.targets):
            by_stage.setdefault(self.stages[t["tap"]], []).append(j)
        null = self.null_statistics()
        final = self._load(self.snapshots[-1])
        series = {s: {k: [] for k in (*STATISTICS, "correlations")} for s in by_stage}
        for it in self.snapshots:
            delta = self._load(it)
            stats = change_statistics(delta)
            for s, idx in by_stage.items():
                for k in STATISTICS:
                    series[s][k].append(float(stats[k][:, idx].mean()))
                series[s]["correlations"].append(correlation(delta[:, idx], final[:, idx]))
        final_stats = change_statistics(final)
        stages, onsets, trained, seeds_at, band_at, ci = {}, {}, {}, {}, {}, {}
        for s, idx in by_stage.items():
            bands = {}
            for k in STATISTICS:
                values = [float(n[k][:, idx].mean()) for n in null]
                half = controls.seed_band(values)
                bands[k] = [float(np.mean(values) - half), float(np.mean(values) + half)]
            outside = [any(not bands[k][0] <= series[s][k][i] <= bands[k][1] for k in STATISTICS)
                       for i in range(len(self.snapshots))]
            onsets[s] = onset(self.snapshots, outside, self.persist)
            key = "frequency_centroid"
            trained[s] = series[s][key][-1]
            seeds_at[s] = [float(n[key][:, idx].mean()) for n in null]
            band_at[s] = bands[key]
            ci[s] = controls.bootstrap_images(final_stats[key][:, idx].ravel(),
                                              np.stack([n[key][:, idx].ravel() for n in null]))
            stages[s] = {"taps": sorted({self.plan.targets[j]["tap"] for j in idx}),
                         "channels": [self.plan.targets[j]["channel"] for j in idx],
                         **series[s], "null_band": bands, "outside": outside, "onset": onsets[s],
                         "verdict": stage_verdict(outside, onsets[s]),
                         "settled_from": settled_from(self.snapshots, series[s]["correlations"],
                                                      self.threshold)}
        finding = controls.assemble(
            "frequency_centroid at the final snapshot",
            "each stage's visualisation leaves the untrained null band during training and stays out, "
            "the first stage earliest", {s: 0 for s in stages},
            trained=trained, untrained_seeds=seeds_at,
            other_controls={"untrained_band": band_at,
                            "pixels": {s: float(frequency_centroid(self.plan.images).mean()) for s in stages},
                            "noise": {s: float(frequency_centroid(
                                controls.white_noise(self.plan.images.shape)).mean()) for s in stages}},
            ci=ci, excluded=excluded_stages(self.embedding_model, {self.stages[t]: t for t in self.taps}),
            onset=onsets, order=depth_order(onsets), ci_over="image-channel pairs",
            seeds=list(self.seeds), every=self.every, iterations=self.snapshots[-1])
        finding["verdict"] = {s: "inconclusive" if s in finding["excluded"] else stages[s]["verdict"]
                              for s in stages}
        return {"every": self.every, "threshold": self.threshold, "persist": self.persist,
                "iterations": self.snapshots, "plan": self.plan.to_json(), "stages": stages,
                "finding": finding}
