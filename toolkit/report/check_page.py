"""The check's pictures and its self-contained HTML report, rendered from report.json and saved results."""

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
from .blocks import STYLE, img_tag, key_value_table, table
from .speed_chart import speed_section

TAP_KEYS = ["tap", "stage", "sqnr_db", "cosine", "rmse_over_scale", "saturation", "noise_added"]
FEATURE_KEYS = ["tap", "channel", "change_correlation", "image_correlation", "gradient_cosine",
                "gradient_cosine_steps", "gain_reference", "gain_test", "gain_ratio"]
SHIFT_KEYS = ["corruption", "accuracy_drop_pp", "accuracy_drop_se_pp", "worst_severity_drop_pp",
              "flip_fraction"]
VERDICT_KEYS = ["name", "level", "value", "direction", "threshold", "passed"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _plt().close(fig)
    write_bytes(path, buf.getvalue())
    return path


def tap_figure(report: dict, path: Path) -> Path:
    """SQNR per tap, one line per board, with the threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.5), dpi=100)
    # Boards usually agree with the host to the dB: distinct markers, dashes and transparency keep every
    # line visible where they overlap.
    styles = [("o", "-", 10), ("s", "--", 7), ("^", ":", 6), ("D", "-.", 5), ("v", "--", 4)]
    for i, board in enumerate(report["boards"]):
        taps = board["taps"]
        marker, dash, size = styles[i % len(styles)]
        ax.plot(range(len(taps)), [min(r["sqnr_db"], 80) for r in taps], marker=marker, ls=dash,
                markersize=size, fillstyle="none" if i else "full", alpha=0.8, lw=1.5, label=board["name"],
                zorder=3 + i)  # the host (big, filled) below the boards (small, hollow)
    names = [r["tap"] for r in report["boards"][0]["taps"]]
    ax.axhline(report["thresholds"]["taps"]["min_sqnr_db"], color="red", ls="--", label="threshold")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Tap SQNR, float Keras vs quantized interpreter (depth order)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def identity_figure(board: dict, path: Path) -> Path:
    """Pair scores float vs quantized, genuine and impostor, with the float threshold."""
    plt = _plt()
    s = board["identities"]["pair_scores"]
    f, q, same = np.array(s["float"]), np.array(s["quantized"]), np.array(s["issame"], bool)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.scatter(f[same], q[same], s=6, label="genuine", alpha=0.6)
    ax.scatter(f[~same], q[~same], s=6, label="impostor", alpha=0.6)
    t = board["identities"]["threshold"]
    ax.axvline(t, color="grey", ls="--")
    ax.axhline(t, color="grey", ls="--")
    lo, hi = float(min(f.min(), q.min())), float(max(f.max(), q.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.5)
    ax.set_xlabel("float pair score")
    ax.set_ylabel("quantized pair score")
    ax.set_title(f"Decisions flipped: {board['identities']['flip_fraction']:.2%}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def feature_figures(out: Path, board_index: int, taps_by_stage: dict[str, str]) -> dict[str, Path]:
    """Per stage: rows host autodiff / float TFLite / quantized TFLite, columns the channels; each cell
    the ascent's change from the (first) start image."""
    d = out / "features"
    plan = ProbePlan.load(d / "plan.json")
    # A float TFLite reference (a pair converted elsewhere) has no autodiff row.
    rows = {**({"host autodiff": ProbeResult.load(d / "host")} if (d / "host").is_dir() else {}),
            "float (FD)": ProbeResult.load(d / "fd_float"),
            "quantized (FD)": ProbeResult.load(d / f"fd_quant_board{board_index}")}
    start = plan.images[0]
    figures = {}
    for stage in STAGES:
        tap = taps_by_stage.get(stage)
        idx = [j for j, t in enumerate(plan.targets) if t["tap"] == tap]
        if not idx:
            continue
        cells = [[grids.signed(r.final_images[0, j] - start) for j in idx] for r in rows.values()]
        img = grids.grid(cells, list(rows), [f"ch {plan.targets[j]['channel']}" for j in idx],
                         f"{stage} stage: {tap} (change from the start image)")
        figures[stage] = grids.write_png(out / "figures" / f"features_board{board_index}_{stage}.png", img)
    return figures


def shift_figure(board: dict, path: Path) -> Path:
    """The shift grid: accuracy drop (pp) per corruption (rows) and severity (columns)."""
    plt = _plt()
    shift = board["shift"]
    names = [r["corruption"] for r in shift["corruptions"]]
    severities = sorted({c["severity"] for c in shift["cells"]})
    drops = {(c["corruption"], c["severity"]): c["accuracy_drop_pp"] for c in shift["cells"]}
    grid = np.array([[drops[(n, s)] for s in severities] for n in names])
    fig, ax = plt.subplots(figsize=(4.5, 0.35 * len(names) + 1.2))
    limit = max(1.0, float(np.abs(grid).max()))
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(severities)), [f"severity {s}" for s in severities])
    ax.set_yticks(range(len(names)), names)
    ax.set_title("accuracy drop under shift, float - quantized (pp)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _save(fig, path)


def disagreement_figure(out: Path, board_index: int, board: dict) -> Path | None:
    """Per start face: the start image, the most disagreeing image the ascent found within its budget, and
    their difference (stretched: the change is a few grey levels)."""
    d = out / "disagreement"
    if not (d / f"board{board_index}" / "result.npz").is_file():
        return None
    plan = ProbePlan.load(d / "plan.json")
    result = ProbeResult.load(d / f"board{board_index}")
    cells, labels = [], []
    for i, face in enumerate(board["disagreement"]["faces"]):
        start, found = plan.images[i], result.final_images[i, 0]
        cells.append([grids.stretch(start), grids.stretch(found), grids.signed(found - start)])
        labels.append(f"face {i}: cos {face['start_cosine']:.3f} -> {face['worst_cosine']:.3f}")
    img = grids.grid(cells, labels, ["start", "found", "difference"],
                     "the ascent's most disagreeing image (float vs quantized embedding)")
    return grids.write_png(out / "figures" / f"disagreement_board{board_index}.png", img)


def _verdict_banner(report: dict) -> str:
    ok = report["passed"]
    colour = "#1a7f37" if ok else "#b42318"
    summary = report["summary"]
    failed = ", ".join(summary["failed_checks"]) or "none"
    acc = summary["verification_accuracy"]
    broken = summary["first_broken_tap"]
    broken = f"<code>{html.escape(broken)}</code>" if broken else "none (every tap within its thresholds)"
    return (f'<div class="banner" style="background:{colour}">'
            f'<h1>{"PASS" if ok else "FAIL"}: {html.escape(summary["variant"])} '
            f"{'keeps' if ok else 'does not keep'} the features</h1>"
            f"<p>verification accuracy float {acc['float']:.4f}, quantized {acc['quantized']:.4f}; "
            f"worst tap <code>{html.escape(str(summary['worst_tap']))}</code>; "
            f"first broken tap {broken}; failed checks: {html.escape(failed)}</p></div>")


MATCH_KEYS = ["tap", "stage", "matched_by", "float_tensor", "quantized_tensor", "op", "shape", "stride",
              "receptive_field", "post_activation"]


def _foreign(pair: dict | None) -> list[str]:
    """A pair converted elsewhere: where its files came from and how its taps were matched."""
    if not pair:
        return []
    files = ", ".join(f"{side} <code>{html.escape(src['file'])}</code> ({src['variant']}, sha256 "
                      f"{src['sha256'][:12]}…, {src['candidates']} candidate taps)"
                      for side, src in pair["sources"].items())
    return ["<h2>Pair converted elsewhere</h2>",
            f"<p>{files}. Taps {pair['taps']} in the files, {pair['taps_matched']} matched; the float "
            "TFLite is the reference. The fix search is off (it needs a source model).</p>",
            table(pair["matches"], MATCH_KEYS)]


def _search(found: dict | None) -> str:
    if not found:
        return "<p>No fix search (the check passed, or the search was off).</p>"
    rows = [{"recipe": r["label"], "change": r["name"], "size_ratio": r["size_ratio"],
             "speedup_b1": r["speedup_b1"], "drop_pp": r["drop_pp"], "drop_se_pp": r["drop_se_pp"],
             "passed": r["passed"],
             "pareto": r["pareto"]} for r in found["rows"]]
    outcome = (f"Cheapest passing recipe: <code>{html.escape(found['best_label'])}</code>, written to "
               f"<code>{html.escape(found['recipe_file'])}</code>." if found["best"]
               else "<b>No recipe passes.</b>")
    where = html.escape(str(found.get("priced_on", "host")))
    return (f"<p>Recipes in order of cost, judged at {' and '.join(found['judged_at'])}; size and batch-1 "
            f"latency against float32, priced on {where}. {outcome}</p>" + table(rows, list(rows[0])))


def render_check(run_dir: str | os.PathLike) -> Path:
    """Write figures/*.png and report.html for the check in ``run_dir``; returns the HTML path."""
    out = Path(run_dir)
    path = out / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no check report (report.json); run `faceprobe check` first")
    report = read_json(path, "check report")
    if report.get("verdict") == "inconclusive":
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>faceprobe check</title>"
                f"<style>{STYLE}</style></head><body><h1>CANNOT JUDGE</h1><p>{html.escape(report['reason'])}"
                f"</p><p>Model <code>{html.escape(report['model']['path'])}</code>, data "
                f"{html.escape(report['data']['source'])}.</p></body></html>")
        write_bytes(out / "report.html", page.encode())
        return out / "report.html"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>faceprobe check</title>"
             f"<style>{STYLE}</style></head><body>", _verdict_banner(report),
             f"<p>Model <code>{html.escape(report['model']['path'])}</code>, data "
             f"{html.escape(report['data']['source'])} ({report['data']['images']} images, "
             f"{report['data']['identities']} identities, {report['data']['pairs']} pairs), calibration "
             f"{html.escape(report['data']['calibration'])}.</p>",
             *_foreign(report.get("foreign")),
             "<h2>Taps</h2>", img_tag(tap_figure(report, out / "figures" / "taps.png"), "tap SQNR")]
    has_features = (out / "features" / "plan.json").is_file()
    for i, board in enumerate(report["boards"]):
        parts += [f"<h2>Board: {html.escape(board['name'])} — {'pass' if board['passed'] else 'FAIL'}</h2>",
                  key_value_table(board["info"]),
                  table(board["verdicts"], VERDICT_KEYS), "<h3>Taps</h3>", table(board["taps"], TAP_KEYS)]
        if has_features and board.get("features"):
            plan_taps = {t["tap"] for t in board["features"]["plan"]["targets"]}
            stages = {r["stage"]: r["tap"] for r in board["taps"] if r["tap"] in plan_taps}
            parts += ["<h3>Features</h3>", table([board["features"]["summary"]], list(
                board["features"]["summary"]))]
            parts += [img_tag(p, f"features {s}") for s, p in feature_figures(out, i, stages).items()]
            parts.append(table(board["features"]["float_vs_quantized"], FEATURE_KEYS))
        if board.get("disagreement"):
            parts += ["<h3>Disagreement ascent</h3>", table([board["disagreement"]["summary"]],
                                                            list(board["disagreement"]["summary"]))]
            figure = disagreement_figure(out, i, board)
            parts += [img_tag(figure, "disagreement")] if figure else []
        if board.get("shift"):
            parts += ["<h3>Identities under shift</h3>", table([board["shift"]["summary"]],
                                                               list(board["shift"]["summary"])),
                      img_tag(shift_figure(board, out / "figures" / f"shift_board{i}.png"), "shift grid"),
                      table(board["shift"]["corruptions"], SHIFT_KEYS)]
        ident = board["identities"]
        rows = [{"model": k, **{m: ident[k][m] for m in ("verification_accuracy", "roc_auc", "eer", "rank1")}}
                for k in ("float", "quantized")]
        parts += ["<h3>Identities</h3>", table(rows, ["model", "verification_accuracy", "roc_auc", "eer",
                                                        "rank1"]),
                  f"<p>mean embedding cosine {ident['embedding_cosine_mean']:.4f} (min "
                  f"{ident['embedding_cosine_min']:.4f}); accuracy drop "
                  f"{ident['accuracy_drop_pp']:.2f} ± {ident['accuracy_drop_se_pp']:.2f} pp (standard "
                  "error over pairs)</p>",
                  img_tag(identity_figure(board, out / "figures" / f"identities_board{i}.png"),
                          "pair scores")]
        if board.get("speed"):
            parts.append(speed_section(report["summary"]["variant"], board["speed"]))
    parts += ["<h2>Fix search</h2>", _search(report.get("search")), "</body></html>"]
    html_path = out / "report.html"
    write_bytes(html_path, "\n".join(parts).encode())
    return html_path
