"""A board's speed in the check's report: latency and memory of the deploy file beside float32's as small
inline SVG bars (no network, no figure files), and the stages' shares of the latency as one stacked bar."""

from __future__ import annotations

import html

WIDTH, BAR, GAP, LABEL = 520, 16, 6, 150
COLOURS = {"quantized": "#2563eb", "float32": "#9ca3af"}
STAGE_COLOURS = ("#1d4ed8", "#7c3aed", "#db2777", "#ea580c", "#65a30d")


def _bars(title: str, rows: list[tuple[str, str, float, str]]) -> str:
    """Horizontal bars on one scale: (label, colour key, value, value text) each."""
    top = max((v for _, _, v, _ in rows), default=0.0) or 1.0
    span = WIDTH - LABEL - 90
    height = len(rows) * (BAR + GAP) + 22
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}"><text x="0" y="12" font-size="12" font-weight="bold">'
             f"{html.escape(title)}</text>"]
    for i, (label, colour, value, text) in enumerate(rows):
        y = 20 + i * (BAR + GAP)
        w = max(1.0, span * value / top)
        base = y + BAR - 4
        parts.append(f'<text x="0" y="{base}" font-size="11">{html.escape(label)}</text>'
                     f'<rect x="{LABEL}" y="{y}" width="{w:.1f}" height="{BAR}" fill="{COLOURS[colour]}"/>'
                     f'<text x="{LABEL + w + 4:.1f}" y="{base}" font-size="11">{html.escape(text)}</text>')
    return "".join(parts) + "</svg>"


def _stages(shares: dict[str, float]) -> str:
    """The stages' shares of the latency as one stacked bar, the head (what follows the last tap) last."""
    if not shares:
        return ""
    head = max(0.0, 1.0 - sum(shares.values()))
    segments = [*shares.items(), ("head", head)]
    span, x = WIDTH - LABEL - 10, float(LABEL)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="58" role="img" '
             'aria-label="stage shares of the latency"><text x="0" y="12" font-size="12" font-weight="bold">'
             "Share of the latency by stage</text>"]
    for i, (stage, share) in enumerate(segments):
        w = span * max(0.0, share)
        colour = STAGE_COLOURS[i % len(STAGE_COLOURS)] if stage != "head" else "#d1d5db"
        parts.append(f'<rect x="{x:.1f}" y="20" width="{w:.1f}" height="{BAR}" fill="{colour}">'
                     f"<title>{html.escape(stage)} {share:.1%}</title></rect>"
                     f'<text x="{x + 2:.1f}" y="52" font-size="10">{html.escape(stage)} {share:.0%}</text>')
        x += w
    return "".join(parts) + "</svg>"


def speed_section(variant: str, speed: dict) -> str:
    """One board's speed block: latency and memory bars beside float32, stage shares, and the figures."""
    latency = _bars("Batch-1 latency (best of the interleaved rounds)", [
        (variant, "quantized", speed["latency_ms"], f"{speed['latency_ms']:.3f} ms"),
        ("float32", "float32", speed["float32_latency_ms"], f"{speed['float32_latency_ms']:.3f} ms")])
    slower = "" if speed["speedup_b1"] >= 1 else ": <b>float32 is the faster file here</b>"
    parts = [f"<p>{variant} runs <b>{speed['speedup_b1']:.2f}x</b> float32's speed at batch 1 on this board "
             f"({speed['kernels']} kernels, threads {speed['threads'] or 'default'}, {speed['rounds']} "
             f"rounds interleaved){slower}.</p>", latency]
    if speed["peak_rss_mib"] is not None:
        parts.append(_bars("Memory (peak RSS over an empty child)", [
            (variant, "quantized", speed["peak_rss_mib"], f"{speed['peak_rss_mib']:.1f} MiB"),
            ("float32", "float32", speed["float32_peak_rss_mib"],
             f"{speed['float32_peak_rss_mib']:.1f} MiB")]))
    parts.append(_stages(speed.get("stage_shares") or {}))
    return "<h3>Speed</h3>" + "<br>".join(p for p in parts if p)
