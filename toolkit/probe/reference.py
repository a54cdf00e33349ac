"""The float model a probe reads taps from, and a check compares the quantized file with: the Keras model
(autodiff available), or a float TFLite file converted elsewhere (its probe copy: taps found in the
flatbuffer, read through the board's activations job)."""

from __future__ import annotations

from typing import Protocol

import keras
import numpy as np

from device.manifest import tap_entries
from device.plan import ProbePlan

from ..zoo import TapSpec, list_taps, tap_key, tap_model
from .ascent import tap_responses

CHUNK = 8  # images per interpreter call: bounds memory


class TapBoard(Protocol):
    """Where a float TFLite probe file runs (``toolkit.check.boards.LocalBoard``)."""

    probe: object  # its Runtime

    def activations(self, plan: ProbePlan) -> dict:
        """``values`` and ``stats`` per tap of the plan's images."""


class Reference(Protocol):
    """The float side of a check: its taps in depth order and their values on normalised images."""

    taps: list[TapSpec]
    model: keras.Model | None  # None: no autodiff, the reference is a TFLite file

    def tap_values(self, images: np.ndarray, taps: list[str] | None = None) -> dict[str, np.ndarray]:
        """Tap name -> (n, h, w, c) float32 maps of ``taps`` (default all)."""


class KerasReference:
    """The float Keras model."""

    def __init__(self, model: keras.Model):
        self.model, self.taps = model, list_taps(model)
        self._cut = tap_model(model, embedding=False)

    def tap_values(self, images: np.ndarray, taps: list[str] | None = None) -> dict[str, np.ndarray]:
        if taps is not None:
            return tap_responses(self.model, images, list(taps))
        out = self._cut(images, training=False)
        return {t.name: np.asarray(out[tap_key(t.name)]) for t in self.taps}


class TFLiteReference:
    """The float TFLite pair (deploy file and its probe copy) in the host's interpreter."""

    model = None

    def __init__(self, board: TapBoard):
        self.board = board
        self.taps = [TapSpec(name, e["stage"], e["channels"], e["stride"], e["receptive_field"])
                     for name, e in tap_entries(board.probe.manifest).items()]

    def tap_values(self, images: np.ndarray, taps: list[str] | None = None) -> dict[str, np.ndarray]:
        names = [t.name for t in self.taps] if taps is None else list(taps)
        parts: dict[str, list] = {t: [] for t in names}
        for start in range(0, len(images), CHUNK):
            plan = ProbePlan(targets=[{"tap": t, "channel": 0} for t in names],
                             images=images[start:start + CHUNK])
            values = self.board.activations(plan)["values"]
            for t in names:
                parts[t].append(values[t])
        return {t: np.concatenate(v) for t, v in parts.items()}


def as_reference(source) -> Reference:
    """A reference from a Keras model (or a reference, unchanged)."""
    return KerasReference(source) if isinstance(source, keras.Model) else source
