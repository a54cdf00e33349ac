"""Re-render a probe directory's pictures and its self-contained HTML page from saved files only.

A probe directory (written by ``toolkit.probe.outputs.write_outputs``) holds plan.json/.npz, result/,
feature_maps.npz and findings.json; ``render`` adds figures/*.png and report.html (images inlined as
base64, no network). An ``emergence.json`` from training is included when found.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from device.files import read_json
from device.plan import ProbePlan, ProbeResult

from ..atomic import write_bytes
from ..zoo import STAGES
from . import grids
from .blocks import STYLE, img_tag, table

EMERGENCE_PLACES = ("emergence.json", "emergence/emergence.json", "../emergence/emergence.json")


def find_probe_dir(run_dir: str | os.PathLike) -> Path:
    """The probe directory inside ``run_dir`` (itself, or its ``probe/``), with a clear error."""
    run_dir = Path(run_dir)
    for d in (run_dir, run_dir / "probe"):
        if (d / "findings.json").is_file() and (d / "result" / "result.json").is_file():
            return d
    raise FileNotFoundError(f"{run_dir} holds no probe results (findings.json + result/); "
                            "run `faceprobe probe MODEL --out DIR` first")


def load_probe_dir(probe_dir: Path) -> tuple[ProbePlan, ProbeResult, dict, dict]:
    """(plan, result, feature maps by key, findings) of a probe directory."""
    plan = ProbePlan.load(probe_dir / "plan.json")
    result = ProbeResult.load(probe_dir / "result")
    with np.load(probe_dir / "feature_maps.npz") as z:
        maps = {k: z[k] for k in z.files}
    return plan, result, maps, read_json(probe_dir / "findings.json", "findings file")


def _stage_targets(plan: ProbePlan, findings: dict) -> dict[str, list[int]]:
    by_stage: dict[str, list[int]] = {}
    for j, t in enumerate(plan.targets):
        by_stage.setdefault(findings["tap_stages"][t["tap"]], []).append(j)
    return {s: by_stage[s] for s in sorted(by_stage, key=lambda s: STAGES.index(s) if s in STAGES else 99)}


def write_figures(probe_dir: Path, plan: ProbePlan, result: ProbeResult, maps: dict, findings: dict) -> dict:
    """figures/stage_<stage>.png (first image) and figures/same_person.png; name -> path."""
    out = {}
    blocks = []
    for stage, idx in _stage_targets(plan, findings).items():
        channels = [plan.targets[j]["channel"] for j in idx]
        taps = ", ".join(dict.fromkeys(plan.targets[j]["tap"] for j in idx))
        fig = grids.stage_grid(plan.images[0], result.final_images[0, idx],
                               np.stack([maps[f"start_{j}"][0] for j in idx]),
                               np.stack([maps[f"final_{j}"][0] for j in idx]),
                               channels, f"{stage} stage ({taps})")
        out[f"stage_{stage}"] = grids.write_png(probe_dir / "figures" / f"stage_{stage}.png", fig)
        blocks.append(grids.person_block(plan.images, result.final_images[:, idx], channels,
                                         f"{stage} stage: change per photo"))
    out["same_person"] = grids.write_png(probe_dir / "figures" / "same_person.png", grids.stack(blocks))
    return out


def find_emergence(probe_dir: Path) -> dict | None:
    for rel in EMERGENCE_PLACES:
        p = probe_dir / rel
        if p.is_file():
            return read_json(p, "emergence file")
    return None


def _by_stage(rows: dict[str, dict]) -> list[dict]:
    return [{"stage": s, **r} for s, r in rows.items()]



STAGE_KEYS = ["stage", "taps", "frequency_centroid", "colour_share", "objective_start", "objective_final",
              "objective_ratio", "step_rms_first", "step_rms_last", "change_rms", "range_min", "range_max"]
INVARIANCE_KEYS = ["stage", "index", "within", "between", "pairs_within", "pairs_between"]
TARGET_KEYS = ["tap", "channel", "objective_start", "objective_final", "step_rms_first", "step_rms_last",
               "final_min", "final_max", "captured_share"]


def _settings(plan: ProbePlan, result: ProbeResult) -> str:
    options = ", ".join(result.meta.get("options_on", [])) or "none"
    seconds = result.meta.get("runtime", {}).get("seconds", float("nan"))
    return ("<p>Gradient ascent on pre-activation taps, x &larr; x + &alpha;&middot;step(&part;h/&part;x); "
            f"steps={plan.steps}, &alpha;={plan.step_size}, step rule <code>{plan.step_rule}</code>, "
            f"objective <code>{plan.objective['kind']}</code>, "
            f"subspace <code>{plan.subspace['kind']}</code>, options beyond the method: "
            f"<code>{html.escape(options)}</code>; {len(plan.images)} start "
            f"image(s), {len(plan.targets)} targets, {seconds:.2f} s.</p>")


def render(run_dir: str | os.PathLike) -> Path:
    """Write figures and report.html for the probe directory in ``run_dir``; returns the HTML path."""
    probe_dir = find_probe_dir(run_dir)
    plan, result, maps, findings = load_probe_dir(probe_dir)
    figures = write_figures(probe_dir, plan, result, maps, findings)
    parts = [f"<h1>faceprobe probe: {html.escape(findings.get('model', ''))}</h1>", _settings(plan, result),
             f"<p>Channels: {html.escape(findings.get('channel_rule', ''))}</p>",
             "<h2>What each stage captures</h2>",
             "<p>frequency_centroid: radial spatial-frequency centroid of the change (1 = Nyquist); "
             "colour_share: share of the change's energy in colour; objective_ratio: final / start "
             "objective; step RMS and final image range in normalised units (valid range about [-1, 1]).</p>",
             table(_by_stage(findings["stages"]), STAGE_KEYS)]
    if findings.get("invariance"):
        parts += ["<h2>Identity invariance</h2>",
                  "<p>(W &minus; B) / (1 &minus; B): W, B = mean cosine similarity of centred stage vectors "
                  f"within / between people ({html.escape(findings.get('invariance_source', ''))}).</p>",
                  table(_by_stage(findings["invariance"]), INVARIANCE_KEYS)]
    emergence = find_emergence(probe_dir)
    if emergence:
        rows = {s: {"stable_from": v["stable_from"], "taps": v["taps"], "channels": v["channels"]}
                for s, v in emergence["stages"].items()}
        parts += ["<h2>Emergence during training</h2>",
                  f"<p>First iteration from which a stage's visualisation stays correlated &ge; "
                  f"{emergence['threshold']} with its final state (snapshot every {emergence['every']} "
                  f"iterations, {len(emergence['iterations'])} snapshots).</p>",
                  table(_by_stage(rows), ["stage", "stable_from", "taps", "channels"])]
    parts.append("<h2>Per stage: results, changes and feature maps (first start image)</h2>")
    parts += [img_tag(p, name) for name, p in figures.items() if name.startswith("stage_")]
    parts += ["<h2>Same person, several photos</h2>", img_tag(figures["same_person"], "same person"),
              "<h2>Per target</h2>", table(result.summary()["targets"], TARGET_KEYS)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>faceprobe probe</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    out = probe_dir / "report.html"
    write_bytes(out, page.encode())
    return out
