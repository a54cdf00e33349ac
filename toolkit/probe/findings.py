"""What each stage captures, as numbers computed from a probe result.

The visualisation of a target is the change the ascent made, delta = final image - start image. Per stage
(over the stage's targets and all images):
  frequency_centroid  power-weighted mean radial spatial frequency of delta (grey: mean over channels,
                      its own mean removed), in units of the Nyquist frequency: 0 = flat, 1 = stripes one
                      pixel wide along an axis (diagonal ones reach up to 1.41). Fine texture scores
                      high; large structured parts score low.
  colour_share        share of delta's energy in colour (the part that differs between R, G and B, i.e.
                      delta minus its per-pixel channel mean): 0 = pure luminance pattern.
  objective_ratio     mean final objective / mean start objective magnitude (how far the ascent pushed).
  step_rms_first/last mean per-image RMS of the first/last applied step (normalised units).
  range_min/max       extremes of the final images (the valid range is about [-1, 1]).
The method expects the first stage to capture colour/texture (high frequency centroid, colour) and the
last stage structured face patterns (lower centroid).

``frequency_finding`` sets the trained model's per-stage centroid and colour share beside their controls
(``toolkit.probe.controls``): the same architecture untrained (each network's channels chosen by the same
rule on the same images), the start images themselves (``pixels``: what a change copying the face would
score) and white noise (0.765 / 0.667 at any size: what a structureless change scores). The claims, read
against the untrained network: the first stage's change is finer (+) and more coloured (+) than an
untrained first stage's, the middle and last stages' coarser (-) and less coloured (-).
"""

from __future__ import annotations

import numpy as np

from device.plan import ProbePlan, ProbeResult

from . import controls

METHOD = {"steps": 20, "step_size": 1.0, "step_rule": "raw", "objective": {"kind": "mean"}}
SIGN = {"first": 1, "middle": -1, "last": -1}


def frequency_centroid(delta: np.ndarray) -> np.ndarray:
    """Per image (n, H, W, C) -> (n,): radial frequency centroid of the grey change, over Nyquist."""
    d = np.asarray(delta, np.float64)
    grey = d.mean(axis=-1)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2
    h, w = grey.shape[1:]
    r = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) / 0.5
    total = power.sum(axis=(1, 2))
    return np.where(total > 0, (power * r).sum(axis=(1, 2)) / np.maximum(total, 1e-300), 0.0)


def colour_share(delta: np.ndarray) -> np.ndarray:
    """Per image (n, H, W, C) -> (n,): share of the change's energy that is colour rather than luminance."""
    d = np.asarray(delta, np.float64)
    chroma = d - d.mean(axis=-1, keepdims=True)
    total = np.square(d).sum(axis=(1, 2, 3))
    return np.where(total > 0, np.square(chroma).sum(axis=(1, 2, 3)) / np.maximum(total, 1e-300), 0.0)


def stage_statistics(plan: ProbePlan, result: ProbeResult, stages: dict[str, str]) -> dict[str, dict]:
    """Stage -> the statistics above, over the stage's targets (``stages``: tap name -> stage)."""
    out: dict[str, dict] = {}
    by_stage: dict[str, list[int]] = {}
    for j, t in enumerate(plan.targets):
        by_stage.setdefault(stages[t["tap"]], []).append(j)
    for stage, idx in by_stage.items():
        delta = (result.final_images[:, idx] - plan.images[:, None]).reshape(-1, *plan.image_shape)
        obj = result.objective[:, idx]
        row = {
            "taps": sorted({plan.targets[j]["tap"] for j in idx}),
            "targets": len(idx),
            "frequency_centroid": float(frequency_centroid(delta).mean()),
            "colour_share": float(colour_share(delta).mean()),
            "objective_start": float(obj[..., 0].mean()),
            "objective_final": float(obj[..., -1].mean()),
            "objective_ratio": float(obj[..., -1].mean() / max(abs(obj[..., 0].mean()), 1e-12)),
            "step_rms_first": float(result.step_norms[:, idx, 0].mean()),
            "step_rms_last": float(result.step_norms[:, idx, -1].mean()),
            "change_rms": float(np.sqrt(np.mean(np.square(delta)))),
        }
        if result.ranges is not None:
            row["range_min"] = float(result.ranges[:, idx, -1, 0].min())
            row["range_max"] = float(result.ranges[:, idx, -1, 1].max())
        out[stage] = row
    return out


def per_image(plan: ProbePlan, result: ProbeResult, stages: dict[str, str]) -> dict[str, dict]:
    """Stage -> {frequency_centroid, colour_share}: per start image (n,), the mean over its targets."""
    by_stage: dict[str, list[int]] = {}
    for j, t in enumerate(plan.targets):
        by_stage.setdefault(stages[t["tap"]], []).append(j)
    out = {}
    n = len(plan.images)
    for stage, idx in by_stage.items():
        delta = (result.final_images[:, idx] - plan.images[:, None]).reshape(-1, *plan.image_shape)
        out[stage] = {"frequency_centroid": frequency_centroid(delta).reshape(n, len(idx)).mean(axis=1),
                      "colour_share": colour_share(delta).reshape(n, len(idx)).mean(axis=1)}
    return out


def probe_statistics(model, images: np.ndarray, per_tap: int = 5, rule: str = "top",
                     **settings) -> dict[str, dict[str, np.ndarray]]:
    """``per_image`` statistics of the default plan (the stage taps, ``per_tap`` channels by ``rule``) run on
    ``model`` from normalised ``images``; ``settings`` default to the method's (20 raw steps, alpha 1,
    channel-mean objective)."""
    from .ascent import Ascender
    from .plans import make_plan, stage_of

    plan = make_plan(model, images, per_tap=per_tap, rule=rule, **{**METHOD, **settings})
    return per_image(plan, Ascender(model, plan).run(), stage_of(model))


def frequency_finding(model, images: np.ndarray, seeds: tuple[int, ...] = controls.SEEDS,
                      **kwargs) -> dict[str, dict]:
    """``{"frequency": finding, "colour": finding}`` of ``model`` on normalised ``images`` with controls
    (see the module docstring); ``kwargs`` go to ``probe_statistics``."""
    from .affine import excluded_stages
    from .plans import resolve_taps, stage_of

    stage = stage_of(model)
    excluded = excluded_stages(model, {stage[t]: t for t in resolve_taps(model)})
    trained = probe_statistics(model, images, **kwargs)
    untrained = [probe_statistics(m, images, **kwargs) for m in controls.untrained_copies(model, seeds)]
    noise = controls.white_noise(images.shape, seed=0)
    reference = {"frequency_centroid": (frequency_centroid(images), frequency_centroid(noise)),
                 "colour_share": (colour_share(images), colour_share(noise))}
    out = {}
    for key, statistic in (("frequency", "frequency_centroid"), ("colour", "colour_share")):
        stages = list(trained)
        pixels, white = reference[statistic]
        out[key] = controls.assemble(
            statistic, "the first stage's change finer and more coloured than an untrained network's, "
                       "deeper stages' coarser and less coloured",
            {s: SIGN[s] for s in stages},
            trained={s: float(trained[s][statistic].mean()) for s in stages},
            untrained_seeds={s: [float(u[s][statistic].mean()) for u in untrained] for s in stages},
            other_controls={"pixels": {s: float(pixels.mean()) for s in stages},
                            "noise": {s: float(white.mean()) for s in stages}},
            ci={s: controls.bootstrap_images(trained[s][statistic],
                                             np.stack([u[s][statistic] for u in untrained])) for s in stages},
            excluded=excluded, images=len(images), seeds=list(seeds), ci_over="images")
    return out
