"""Building blocks of the self-contained HTML pages: the style, inlined PNGs and tables."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
         "text-align:right}th{background:#eee}img{max-width:100%;margin:.5em 0;border:1px solid #ddd}"
         "code{background:#f4f4f4;padding:1px 3px}")


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
    return f"<table><tr>{head}</tr>{body}</table>"
