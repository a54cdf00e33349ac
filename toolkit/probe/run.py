"""`run_probe`: build (or take) a plan, run it on the float Keras model, the findings against their
controls, the pictures and report; optionally the same plan on board agents by finite differences.
`run_invariance`: the per-stage identity invariance index of a dataset of identity folders."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device.plan import ProbePlan, ProbeResult

from ..params import ParameterError

if TYPE_CHECKING:
    from ..remote import Trust


@dataclass(frozen=True)
class ProbeOptions:
    """How a probe runs.

    Start images: ``images`` (a dataset of identity folders, a folder of images, or image files),
    ``person``, ``n_images``, ``align``. Targets: ``taps`` (names or stages; default the deepest tap of each
    stage), ``channels`` (default ``per_tap`` by ``channel_rule``). Ascent: ``steps``, ``step_size``,
    ``step_rule``, ``objective`` and ``position``, ``subspace``, and the host-only regularisers ``clip``,
    ``jitter``, ``l2_decay``, ``blur``. Findings: ``seeds`` untrained networks as controls (0: none);
    ``data`` (and ``identities``) add the invariance index, of the ascent changes or the tap responses
    (``source``) on a common ``grid``. Boards: ``agents`` run the plan on ``tflite`` (a probe model) by
    finite differences; ``token`` is their bearer token, ``trust`` how their certificates are trusted.
    """

    images: Sequence[str] = ()
    person: str | None = None
    n_images: int = 4
    align: bool = False
    taps: Sequence[str] | None = None
    channels: Sequence[int] | None = None
    per_tap: int = 5
    channel_rule: str = "top"
    steps: int = 20
    step_size: float = 1.0
    step_rule: str = "raw"
    objective: str = "mean"
    position: Sequence[int] | None = None
    subspace: dict = field(default_factory=lambda: {"kind": "full"})
    clip: bool = False
    jitter: int = 0
    l2_decay: float = 0.0
    blur: float = 0.0
    seeds: int = 3
    data: str | os.PathLike | None = None
    identities: str | None = None
    source: str = "ascent"
    grid: int | None = None
    agents: Sequence[str] = ()
    tflite: str | os.PathLike | None = None
    token: str | None = None
    trust: Trust | None = None

    def __post_init__(self) -> None:
        if self.position is not None and len(self.position) != 2:
            raise ParameterError("position", f"{{name}} must be ROW,COL, got {list(self.position)}")
        if self.seeds < 0:
            raise ParameterError("seeds", "{name} must be >= 0")
        if self.grid is not None and self.grid < 1:
            raise ParameterError("grid", "{name} must be >= 1")
        agents = [self.agents] if isinstance(self.agents, str) else list(self.agents)
        urls = tuple(u.strip() for a in agents for u in a.split(",") if u.strip())
        object.__setattr__(self, "agents", urls)

    @property
    def ascent(self) -> dict:
        """The ascent settings every plan and finding of this probe shares."""
        return {"steps": self.steps, "step_size": self.step_size, "step_rule": self.step_rule,
                "objective": {"kind": self.objective,
                              "position": None if self.position is None else list(self.position)}}


def build_plan(model, opts: ProbeOptions, progress: bool = True) -> tuple[ProbePlan, str, str]:
    """(the plan, where its start images came from, how its channels were chosen)."""
    from ..data import normalize
    from .images import load_start_images
    from .plans import make_plan

    size = int(model.input_shape[1])
    images, origin = load_start_images(list(opts.images), size, opts.n_images, opts.person, progress,
                                       align=opts.align)
    plan = make_plan(model, normalize(images), taps=opts.taps, channels=opts.channels, per_tap=opts.per_tap,
                     rule=opts.channel_rule, subspace=opts.subspace,
                     options={"clip": opts.clip, "jitter": opts.jitter, "l2_decay": opts.l2_decay,
                              "blur": opts.blur}, **opts.ascent)
    rule = ("explicit channels" if opts.channels else
            f"{opts.per_tap} per tap by rule '{opts.channel_rule}' on the start images")
    return plan, origin, rule


def measure_invariance(model, opts: ProbeOptions, progress: bool = True) -> dict:
    """The per-stage identity invariance index of ``opts.data``, against controls when ``opts.seeds``."""
    from ..data import load_identity_folders, normalize
    from .invariance import invariance_finding, stage_invariance

    if not opts.data:
        raise ParameterError("data", "the invariance index needs {name}, a dataset of identity folders "
                                     "(several photos each)")
    size = int(model.input_shape[1])
    fs = load_identity_folders(opts.data, image_size=size, align=opts.align, progress=progress,
                               identities=opts.identities or None)
    settings = {"per_tap": opts.per_tap, "rule": opts.channel_rule, **opts.ascent}
    out = {"source": opts.source, "data": str(opts.data), "identities": len(fs.names), "images": len(fs)}
    if opts.seeds:
        finding = invariance_finding(model, normalize(fs.images), fs.labels, source=opts.source,
                                     seeds=tuple(range(1, opts.seeds + 1)), grid=opts.grid, **settings)
        return {"stages": finding["trained"], "controls": finding["controls"], "ci": finding["ci"],
                "effect": finding["effect"], "verdict": finding["verdict"], "detail": finding["detail"],
                "finding": finding, "grid": finding["grid"], **out}
    detail = stage_invariance(model, normalize(fs.images), fs.labels, source=opts.source, grid=opts.grid,
                              **settings)
    return {"stages": {s: v["index"] for s, v in detail.items()}, "detail": detail, **out}


def run_invariance(model_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                   options: ProbeOptions | None = None, progress: bool = True, **settings: Any) -> dict:
    """The invariance index of ``options.data`` (see ``measure_invariance``), written to
    ``out_dir/invariance.json`` when an ``out_dir`` is given."""
    from ..atomic import write_json
    from ..modelfile import load_face_model

    opts = replace(options or ProbeOptions(), **settings)
    model, _ = load_face_model(model_path)
    inv = measure_invariance(model, opts, progress)
    if out_dir:
        write_json(Path(out_dir) / "invariance.json", inv)
    return inv


def probe_boards(plan: ProbePlan, host: ProbeResult, out: Path, opts: ProbeOptions) -> dict:
    """Run ``plan`` on every agent at once, save each board's result under ``out/boards/``, compare with
    the host's autodiff."""
    from ..remote import probe_remote
    from .compare import compare_ascents

    results = probe_remote(opts.agents, opts.tflite, plan, token=opts.token, trust=opts.trust)
    boards = {}
    for url, board in results.items():
        folder = out / "boards" / re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://")[-1])
        board.save(folder)
        rows = compare_ascents(plan, host, board)
        boards[url] = {"result": str(folder), "runtime": board.meta.get("runtime"),
                       "gradient_cosine": float(np.mean([r["gradient_cosine"] for r in rows])),
                       "change_correlation": float(np.mean([r["change_correlation"] for r in rows]))}
    return boards


def run_probe(model_path: str | os.PathLike, out_dir: str | os.PathLike,
              plan: ProbePlan | str | os.PathLike | None = None, options: ProbeOptions | None = None,
              progress: bool = True, save_plan: str | os.PathLike | None = None, **settings: Any) -> dict:
    """Probe ``model_path`` and write the plan, result, pictures, findings.json and report.html into
    ``out_dir``; returns the summary (stages, findings with controls, invariance, boards).

    ``plan``: run this plan (or the plan file) instead of building one from ``options``; no findings are
    drawn for it.
    ``options``: a ``ProbeOptions``; keyword ``settings`` are fields of it. ``save_plan``: also write the plan
    used there. Raises ParameterError naming a bad argument.
    """
    from ..modelfile import load_face_model
    from .ascent import run_plan
    from .outputs import write_outputs

    opts = replace(options or ProbeOptions(), **settings)
    model, _ = load_face_model(model_path)
    given = plan is not None
    if isinstance(plan, str | os.PathLike):
        plan, origin, rule = ProbePlan.load(plan), f"plan {plan}", "from the plan"
    elif given:
        origin, rule = "a plan in memory", "from the plan"
    else:
        plan, origin, rule = build_plan(model, opts, progress)
    if opts.agents and (not opts.tflite or plan.subspace["kind"] == "full"):
        raise ParameterError("agents", "{name} needs tflite (a probe .tflite, pushed to the boards) and a "
                                       "declared subspace such as dct:4: a board estimates the gradient by "
                                       "finite differences, which reach only a small subspace of the image")
    if save_plan:
        plan.save(save_plan)
    result = run_plan(model, plan, progress=progress)
    extra: dict[str, Any] = {"images": origin, "channel_rule": rule}
    if opts.seeds and not given:
        from .findings import frequency_finding

        extra["findings"] = frequency_finding(model, plan.images, seeds=tuple(range(1, opts.seeds + 1)),
                                              per_tap=opts.per_tap, rule=opts.channel_rule, steps=opts.steps,
                                              step_size=opts.step_size, step_rule=opts.step_rule,
                                              objective=plan.objective)
    if opts.data:
        inv = measure_invariance(model, opts, progress)
        extra.update(invariance=inv["detail"], invariance_source=f"{inv['source']} on {inv['data']}")
        if "finding" in inv:
            extra.setdefault("findings", {})["invariance"] = inv["finding"]
    findings = write_outputs(model, plan, result, out_dir, **extra)
    summary = {"out": str(out_dir), "report": findings["report"],
               "seconds": result.meta["runtime"]["seconds"], "targets": len(plan.targets),
               "images": len(plan.images), "stages": findings["stages"]}
    if "findings" in findings:
        summary["findings"] = {k: {f: v[f] for f in ("trained", "controls", "effect", "ci", "verdict")}
                               for k, v in findings["findings"].items()}
    if "invariance" in findings:
        summary["invariance"] = {s: v["index"] for s, v in findings["invariance"].items()}
    if opts.agents:
        summary["boards"] = probe_boards(plan, result, Path(out_dir), opts)
    return summary
