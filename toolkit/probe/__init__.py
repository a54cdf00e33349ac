"""The gradient-ascent probe: plans, batched autodiff ascent, channel choice and the three findings with
their controls; ``run_probe`` puts them together (as ``toolkit.check.run_check`` does for the check).

Heavy (TensorFlow) submodules load on first use, so importing ``toolkit.probe`` stays cheap.
"""

from __future__ import annotations

from device.plan import PLAN_SCHEMA, RESULT_SCHEMA, ProbePlan, ProbeResult

__all__ = ["PLAN_SCHEMA", "RESULT_SCHEMA", "ProbeOptions", "ProbePlan", "ProbeResult", "make_plan",
           "run_invariance", "run_plan", "run_probe"]


def __getattr__(name: str):
    if name in ("ProbeOptions", "run_probe", "run_invariance"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_plan(model, plan: ProbePlan, progress: bool = True) -> ProbeResult:
    """Run ``plan`` on a Keras ``model`` by autodiff; see ``toolkit.probe.ascent``."""
    from .ascent import run_plan as _run

    return _run(model, plan, progress=progress)


def make_plan(model, images, **kwargs) -> ProbePlan:
    """A plan for ``model`` on normalised ``images``; see ``toolkit.probe.plans.make_plan``."""
    from .plans import make_plan as _make

    return _make(model, images, **kwargs)
