"""Building probe plans from a model: taps by name or stage, channels by rule or by list."""

from __future__ import annotations

import keras
import numpy as np

from device.plan import ProbePlan

from ..zoo import STAGES, list_taps, stage_taps
from .ascent import tap_responses
from .channels import choose_channels


def resolve_taps(model: keras.Model, taps: list[str] | None = None) -> list[str]:
    """Tap names from names or stage names (``first``/``middle``/``last``); default: one tap per stage."""
    by_stage = {s: t.name for s, t in stage_taps(model).items()}
    if not taps:
        return list(by_stage.values())
    names = {t.name for t in list_taps(model)}
    out = []
    for t in taps:
        if t in by_stage:
            out.append(by_stage[t])
        elif t in names:
            out.append(t)
        else:
            raise ValueError(f"--taps: {t!r} is neither a tap nor a stage ({', '.join(STAGES)}); "
                             f"taps: {', '.join(sorted(names))}")
    return list(dict.fromkeys(out))


def stage_of(model: keras.Model) -> dict[str, str]:
    """Tap name -> its stage."""
    return {t.name: t.stage for t in list_taps(model)}


def make_plan(model: keras.Model, images: np.ndarray, taps: list[str] | None = None,
              channels: list[int] | dict[str, list[int]] | None = None, per_tap: int = 5, rule: str = "top",
              **settings) -> ProbePlan:
    """A plan over ``taps`` (default: the three stage taps) with ``per_tap`` channels chosen by ``rule``
    on ``images`` (normalised), or the given ``channels`` (one list for every tap, or per tap).
    ``settings`` are ProbePlan fields (steps, step_size, step_rule, objective, options, subspace)."""
    names = resolve_taps(model, taps)
    if channels is None:
        chosen = choose_channels(tap_responses(model, images, names), per_tap, rule)
    elif isinstance(channels, dict):
        chosen = {t: list(channels[t]) for t in names}
    else:
        chosen = {t: list(channels) for t in names}
    targets = [{"tap": t, "channel": int(c)} for t in names for c in chosen[t]]
    return ProbePlan(targets=targets, images=np.asarray(images, np.float32), **settings)
