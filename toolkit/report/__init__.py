"""PNG grids and the self-contained HTML report of probe results."""

from __future__ import annotations


def render(run_dir):
    """Re-render figures and report.html of a probe run directory; see ``toolkit.report.page``."""
    from .page import render as _render

    return _render(run_dir)


__all__ = ["render"]
