"""Controls for the findings: untrained networks, noise, bootstrap intervals and verdicts.

A finding is a per-stage statistic of the trained model set beside what the same statistic gives on
controls: the same architecture untrained (several initialisation seeds), raw pixels and white noise
(and, for the invariance index, a label-permutation null). Its ``effect`` is the trained value minus the
*relevant* control (the untrained network: what training added), with a 95 % bootstrap interval over
images or identities. The verdict, for a claim that the effect has sign ``s`` (``expected``):

  reproduced      the interval lies on the claimed side of 0 and the effect exceeds the seed band (the
                  half-width of the 95 % prediction interval of one more untrained network,
                  t(0.975, k-1) * sd * sqrt(1 + 1/k) over k seeds: what a different initialisation
                  alone can move the statistic by);
  not reproduced  the interval lies on the other side of 0, or the trained value lies within the range
                  of the untrained seeds (a network that was never trained gives it too);
  inconclusive    anything else (the interval is too wide to tell), and a stage left out (``excluded``,
                  with the reason: e.g. a tap that is an affine map of the image, ``toolkit.probe.affine``).
"""

from __future__ import annotations

import keras
import numpy as np

SEEDS = (1, 2, 3)
RESAMPLES = 2000


def untrained_copies(model: keras.Model, seeds: tuple[int, ...] = SEEDS) -> list[keras.Model]:
    """The same architecture freshly initialised, once per seed (fresh batch-norm statistics).

    Sets Keras' global random seed: call it outside a training run you want reproducible."""
    out = []
    for seed in seeds:
        keras.utils.set_random_seed(int(seed))
        copy = keras.models.clone_model(model)
        copy.name = f"{model.name}_untrained_{seed}"
        out.append(copy)
    return out


def white_noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Gaussian white noise of ``shape`` (float64)."""
    return np.random.default_rng(seed).normal(size=shape)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Central ``level`` interval of bootstrap ``samples``."""
    tail = 50 * (1 - level)
    lo, hi = np.percentile(np.asarray(samples, np.float64), [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_images(trained: np.ndarray, untrained: np.ndarray, resamples: int = RESAMPLES,
                     seed: int = 0) -> list[float]:
    """95 % interval of mean(trained) - mean(untrained) with images resampled (paired: the same images
    for both). ``trained``: (n,) per-image values; ``untrained``: (seeds, n)."""
    trained = np.asarray(trained, np.float64)
    untrained = np.asarray(untrained, np.float64).reshape(-1, len(trained))
    idx = np.random.default_rng(seed).integers(0, len(trained), (resamples, len(trained)))
    return percentile_ci(trained[idx].mean(axis=1) - untrained[:, idx].mean(axis=(0, 2)))


# Student's t, 97.5 % quantile, by degrees of freedom (beyond 10: the Cornish-Fisher approximation).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seed_band(values: list[float]) -> float:
    """Half-width of the 95 % prediction interval of one more seed's value (0 with fewer than 2 seeds)."""
    v = np.asarray(values, np.float64)
    k = len(v)
    if k < 2:
        return 0.0
    t = _T975.get(k - 1, 1.96 + 2.37 / (k - 1))
    return float(t * v.std(ddof=1) * np.sqrt(1 + 1 / k))


def verdict(trained: float, seeds: list[float], ci: list[float], expected: int) -> str:
    """See the module docstring; ``expected`` is +1 or -1, ``seeds`` the untrained values."""
    effect = trained - float(np.mean(seeds))
    lo, hi = sorted((expected * ci[0], expected * ci[1]))
    if lo > 0 and expected * effect > seed_band(seeds):
        return "reproduced"
    if hi < 0 or min(seeds) <= trained <= max(seeds):
        return "not reproduced"
    return "inconclusive"


def assemble(statistic: str, claim: str, expected: dict[str, int], trained: dict[str, float],
             untrained_seeds: dict[str, list[float]], other_controls: dict[str, dict[str, float]],
             ci: dict[str, list[float]], excluded: dict[str, str] | None = None, **extra) -> dict:
    """One finding in the shape every report uses: trained, controls by name, effect (trained minus the
    untrained mean), ci, verdict per stage, and the settings that produced it."""
    stages = list(trained)
    untrained = {s: float(np.mean(untrained_seeds[s])) for s in stages}
    effect = {s: float(trained[s] - untrained[s]) for s in stages}
    band = {s: seed_band(untrained_seeds[s]) for s in stages}
    return {
        "statistic": statistic, "claim": claim, "expected_sign": expected,
        "trained": trained,
        "controls": {"untrained": untrained, **other_controls},
        "untrained_seeds": untrained_seeds, "seed_band": band,
        "effect": effect, "effect_against": "untrained", "ci": ci,
        "verdict": {s: "inconclusive" if s in (excluded or {}) else
                    verdict(trained[s], untrained_seeds[s], ci[s], expected[s]) for s in stages},
        "excluded": excluded or {},
        **extra,
    }

