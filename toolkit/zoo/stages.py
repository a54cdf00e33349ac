"""Stage labels for taps found in a network rather than declared by hand: by output stride, then depth."""

from __future__ import annotations

STAGE_LEVELS = 3  # first, middle, last


def assign_stages(strides: list[int]) -> list[str]:
    """A stage for each tap, given the taps' total strides in depth order.

    With three or more distinct strides the stride levels are split into thirds (the shallowest third is
    ``first``, the deepest ``last``), so taps at one resolution share a stage; with fewer, the taps
    themselves are split into thirds by depth.
    """
    levels = sorted(set(strides))
    n = len(levels) if len(levels) >= STAGE_LEVELS else len(strides)
    ranks = [levels.index(s) for s in strides] if len(levels) >= STAGE_LEVELS else list(range(len(strides)))
    third = n / STAGE_LEVELS
    return ["first" if r < third else "last" if r >= n - third else "middle" for r in ranks]
