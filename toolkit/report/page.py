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



STAGE_COLUMNS = {
    "stage": "the stage (first, middle, last) of the taps probed",
    "taps": "the tap(s) of the stage (pre-activation: a conv block's batch-norm output, before its "
            "activation)",
    "frequency_centroid": "power-weighted mean radial frequency of the change (final - start image), grey, "
                          "1 = Nyquist; white noise scores 0.765",
    "colour_share": "share of the change's energy in colour rather than luminance; white noise scores 0.667",
    "objective_start": "mean of the channel objective on the start images",
    "objective_final": "mean of the channel objective after the last step",
    "objective_ratio": "objective_final / |objective_start|: how far the ascent pushed",
    "step_rms_first": "RMS of the first applied step (normalised pixel units, valid range about [-1, 1])",
    "step_rms_last": "RMS of the last applied step",
    "change_rms": "RMS of the whole change final - start",
    "range_min": "smallest pixel value of the final images",
    "range_max": "largest pixel value of the final images",
}
FINDING_COLUMNS = {
    "stage": "the stage",
    "trained": "the statistic on the trained model",
    "untrained": "the same architecture freshly initialised, mean over seeds (the control the effect is "
                 "measured against)",
    "pixels": "the statistic of the start images themselves (frequency, colour) or of raw pixels pooled to "
              "the same grid (invariance)",
    "noise": "the statistic of white noise",
    "permutation": "invariance index with identities shuffled (mean of the permutation null)",
    "untrained_band": "95 % prediction band of one untrained network (emergence)",
    "effect": "trained - untrained",
    "ci": "95 % bootstrap interval of the effect (over images, or identities for invariance)",
    "seed_band": "half-width of the 95 % prediction interval of one more untrained network: an effect "
                 "inside it is no larger than re-initialising gives",
    "verdict": "reproduced / not reproduced / inconclusive (rule in toolkit/probe/controls.py)",
}
INVARIANCE_COLUMNS = {
    "stage": "the stage",
    "index": "(W - B) / (1 - B): 1 = a person's photos give the same vector, 0 = no more alike than "
             "strangers'",
    "within": "W: mean cosine similarity of centred stage vectors over same-person pairs",
    "between": "B: the same over different-person pairs",
    "pairs_within": "number of same-person pairs",
    "pairs_between": "number of different-person pairs",
}
EMERGENCE_COLUMNS = {
    "stage": "the stage",
    "onset": "first iteration from which the stage's visualisation stays outside the untrained null band "
             "(frequency centroid or colour share); None: never for good",
    "verdict": "reproduced (an onset), not reproduced (inside the band at the end), inconclusive",
    "settled_from": "first iteration from which the visualisation correlates >= the threshold with the "
                    "final one (settling, not onset)",
    "final_frequency_centroid": "frequency centroid of the change at the last snapshot (the saved model)",
    "null_band": "the untrained null band of the frequency centroid",
    "taps": "the tap probed",
    "channels": "the channels probed (evenly spread, fixed during training)",
}
TARGET_COLUMNS = {
    "tap": "the tap", "channel": "the channel maximised",
    "objective_start": "objective on the start images (mean over images)",
    "objective_final": "objective after the last step",
    "step_rms_first": "RMS of the first applied step", "step_rms_last": "RMS of the last applied step",
    "final_min": "smallest pixel of the final images", "final_max": "largest pixel of the final images",
    "captured_share": "share of the gradient inside the subspace (subspace ascent only)",
}


def columns(explained: dict[str, str], present: list[str] | None = None) -> str:
    """One line per table column saying what it holds (only the ``present`` ones when given)."""
    keys = [k for k in explained if present is None or k in present]
    items = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(explained[k])}</li>" for k in keys)
    return f"<ul class='columns'>{items}</ul>"


def finding_rows(finding: dict) -> list[dict]:
    """A finding (``toolkit.probe.controls.assemble``) as one table row per stage."""
    rows = []
    for s, trained in finding["trained"].items():
        row = {"stage": s, "trained": trained}
        row.update({name: values[s] for name, values in finding["controls"].items()})
        row.update(effect=finding["effect"][s], ci=finding["ci"][s], seed_band=finding["seed_band"][s],
                   verdict=finding["verdict"][s])
        rows.append(row)
    return rows


def _table(rows: list[dict], explained: dict[str, str]) -> str:
    keys = [k for k in explained if any(k in r for r in rows)]
    return columns(explained, keys) + table(rows, keys)


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
             _table(_by_stage(findings["stages"]), STAGE_COLUMNS)]
    for name, finding in findings.get("findings", {}).items():
        parts += [f"<h3>Finding: {html.escape(name)} ({html.escape(finding['statistic'])}) against controls"
                  "</h3>", f"<p>Claim: {html.escape(finding['claim'])}.</p>",
                  _table(finding_rows(finding), FINDING_COLUMNS)]
    if findings.get("invariance"):
        parts += ["<h2>Identity invariance</h2>",
                  f"<p>Source: {html.escape(findings.get('invariance_source', ''))}.</p>",
                  _table(_by_stage(findings["invariance"]), INVARIANCE_COLUMNS)]
    emergence = find_emergence(probe_dir)
    if emergence:
        rows = {s: {"onset": v["onset"], "verdict": v["verdict"], "settled_from": v["settled_from"],
                    "final_frequency_centroid": v["frequency_centroid"][-1],
                    "null_band": v["null_band"]["frequency_centroid"], "taps": v["taps"],
                    "channels": v["channels"]}
                for s, v in emergence["stages"].items()}
        parts += ["<h2>Emergence during training</h2>",
                  f"<p>Snapshot every {emergence['every']} iterations, {len(emergence['iterations'])} "
                  f"snapshots; order of onsets with depth: {html.escape(emergence['finding']['order'])}.</p>",
                  _table(_by_stage(rows), EMERGENCE_COLUMNS)]
        if "finding" in emergence:
            parts.append(_table(finding_rows(emergence["finding"]), FINDING_COLUMNS))
    parts.append("<h2>Per stage: results, changes and feature maps (first start image)</h2>")
    parts += [img_tag(p, name) for name, p in figures.items() if name.startswith("stage_")]
    parts += ["<h2>Same person, several photos</h2>", img_tag(figures["same_person"], "same person"),
              "<h2>Per target</h2>", _table(result.summary()["targets"], TARGET_COLUMNS)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>faceprobe probe</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    out = probe_dir / "report.html"
    write_bytes(out, page.encode())
    return out
