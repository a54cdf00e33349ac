"""Building blocks of the self-contained HTML pages: the style, inlined PNGs and tables."""

from __future__ import annotations

import base64
import html
from pathlib import Path

# Wide tables scroll inside their own box (and long snake_case headers may break) so the page keeps its
# width; code spans set their own colours so they stay legible on the coloured verdict banner.
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
         ".scroll{overflow-x:auto;max-width:100%}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
         "text-align:right}th{background:#eee;overflow-wrap:anywhere;min-width:4em}"
         "td.key{text-align:left;font-weight:bold}"
         "img{max-width:100%;margin:.5em 0;border:1px solid #ddd}"
         "code{background:#f4f4f4;color:#222;padding:1px 3px;overflow-wrap:anywhere}"
         ".banner{padding:1em;border-radius:6px;color:#fff}.banner h1{margin:0}"
         ".banner code{background:rgba(255,255,255,.9);color:#111}")


def img_tag(path: Path, alt: str) -> str:
    """A PNG file as an <img> with the data inline (no network)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(v) -> str:
    """A table cell: floats to 4 significant digits, lists joined, text escaped."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(fmt(x) for x in v)
    return html.escape(str(v))


def table(rows: list[dict], keys: list[str]) -> str:
    """An HTML table of ``rows`` with the columns of ``keys`` that any row has."""
    keys = [k for k in keys if any(k in r for r in rows)]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


def key_value_table(d: dict) -> str:
    """A two-column table of ``d`` (nested values as compact ``key: value`` text), e.g. a runtime's info."""

    def cell(v) -> str:
        if isinstance(v, dict):
            return "; ".join(f"{html.escape(str(k))}: {cell(x)}" for k, x in v.items()) or "&mdash;"
        return fmt(v) if v not in (None, "") else "&mdash;"

    rows = "".join(f"<tr><td class='key'>{html.escape(str(k))}</td><td style='text-align:left'>{cell(v)}</td>"
                   "</tr>" for k, v in d.items())
    return f"<div class='scroll'><table>{rows}</table></div>"
