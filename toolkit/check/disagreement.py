"""The disagreement level: from real check faces, the largest float-vs-quantized embedding disagreement
that finite-difference ascent finds within an L-infinity budget (grey levels), beside what the same budget
spent on random perturbations finds (``device.ascent``'s control) — inputs where quantization does not keep
the embedding, found rather than sampled. The ascent runs where the deploy file runs (the host, a board),
against the float32 deploy file the board receives too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device.plan import ProbePlan, ProbeResult

from .boards import Board
from .options import CheckOptions

if TYPE_CHECKING:  # judging imports this module
    from .judging import CheckData

BUDGET_GREY_LEVELS = 8.0
STEPS = 10
SUBSPACE = 3  # the feature level's DCT subspace: 27 directions, 55 evaluations a step
CONTROL = 100


@dataclass(frozen=True)
class DisagreementSpec:
    """The plan every board runs and the float32 deploy file it is compared with."""

    plan: ProbePlan
    reference: Path


def disagreement_spec(data: CheckData, reference: Path, opts: CheckOptions) -> DisagreementSpec:
    """The disagreement ascent from the first ``opts.disagreement_images`` tap-level faces of ``data``,
    against the float32 deploy file ``reference``."""
    images = data.images[data.sample[:opts.disagreement_images]]
    return DisagreementSpec(disagreement_plan(images, data.normalization, opts.budget, seed=opts.seed),
                            reference)


def disagreement_plan(images: np.ndarray, normalization: dict, budget: float = BUDGET_GREY_LEVELS,
                      steps: int = STEPS, subspace_size: int = SUBSPACE, control: int = CONTROL,
                      seed: int = 0) -> ProbePlan:
    """Sign steps (the L-infinity steepest step) of a quarter of the budget in a DCT subspace, the budget
    converted from grey levels to normalised units."""
    return ProbePlan(targets=[], images=images, steps=steps, step_size=0.5 * budget / 8.0, step_rule="sign",
                     subspace={"kind": "dct", "size": subspace_size},
                     finite_difference={"seed": seed, "epsilon_steps": 16.0, "scheme": "central"},
                     objective={"kind": "disagreement", "measure": "embedding",
                                "budget": budget / float(normalization["scale"]), "control": control})


def disagreement_level(board: Board, spec: DisagreementSpec, normalization: dict) -> tuple[dict, ProbeResult]:
    """Per start face the worst cosine found, its step curve and the random control's worst; the summary
    (``worst_case_embedding_cosine`` is what the gate reads) and the board's result."""
    result = board.disagreement(spec.plan, spec.reference)
    found = result.objective[:, 0]  # (faces, steps + 1) cosine distances
    control = result.meta.get("control", {})
    chance = np.asarray(control.get("worst", [np.nan] * len(found)))
    faces = [{"start_cosine": float(1 - f[0]), "worst_cosine": float(1 - f.max()),
              "random_worst_cosine": float(1 - c), "curve_cosine": (1 - f).tolist()}
             for f, c in zip(found, chance, strict=True)]
    ascent, random = 1 - float(found.max()), 1 - float(np.nanmax(chance))
    summary = {"worst_case_embedding_cosine": ascent, "random_worst_cosine": random,
               "ratio": (1 - ascent) / (1 - random) if random < 1 else None,
               "budget_grey_levels": spec.plan.objective["budget"] * float(normalization["scale"]),
               "steps": spec.plan.steps, "random_tries": control.get("count", 0), "faces": len(found),
               "evaluations": int(sum(result.meta["evaluations_per_step"])) + len(found)}
    return {"faces": faces, "summary": summary}, result
