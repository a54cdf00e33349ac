"""Representative channels: which 5 channels of a tap the pictures show.

Rules, applied to the channel means of the tap's pre-activation maps over the start images:
  top     the k channels with the largest mean response (ties: lower index first) - what the start
          faces already drive most;
  spread  k channels at evenly spaced ranks of that ordering, from the most to the least driven - the
          range of what the tap does.
Explicit channel lists bypass the rule.
"""

from __future__ import annotations

import numpy as np

RULES = ("top", "spread")


def rank_channels(responses: np.ndarray) -> np.ndarray:
    """Channel indices ordered by mean response over images and positions, largest first (stable)."""
    means = np.asarray(responses, np.float64).mean(axis=(0, 1, 2))
    return np.argsort(-means, kind="stable")


def pick(ranking: np.ndarray, k: int, rule: str = "top") -> list[int]:
    """``k`` channels from a ranking by ``rule`` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"channel rule must be one of {RULES}, got {rule!r}")
    k = min(int(k), len(ranking))
    if k < 1:
        raise ValueError(f"need at least one channel, got k={k}")
    if rule == "top":
        return [int(c) for c in ranking[:k]]
    ranks = np.round(np.linspace(0, len(ranking) - 1, k)).astype(int)
    return [int(ranking[r]) for r in ranks]


def choose_channels(responses: dict[str, np.ndarray], k: int = 5, rule: str = "top") -> dict[str, list[int]]:
    """Tap name -> ``k`` channels by ``rule``, from each tap's responses (n, h, w, c) on the start images."""
    return {tap: pick(rank_channels(r), k, rule) for tap, r in responses.items()}
