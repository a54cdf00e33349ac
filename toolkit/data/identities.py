"""Identity selections: "s1-s30,s35,alice" names the people of a dataset that a run uses."""

from __future__ import annotations

import re
from collections.abc import Sequence

_RANGE = re.compile(r"^(.*?)(\d+)$")


def parse_identities(spec: str | Sequence[str]) -> list[str]:
    """Expand "s1-s30,s35,alice" into identity names (a range needs a shared prefix and numbers); a list of
    names is taken as it is."""
    if not isinstance(spec, str):
        names = [str(n) for n in spec]
        if not names:
            raise ValueError("identity selection names no identities")
        return names
    names = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        lo, sep, hi = token.partition("-")
        m_lo, m_hi = _RANGE.match(lo), _RANGE.match(hi) if sep else None
        if sep and m_lo and m_hi and m_lo.group(1) == m_hi.group(1):
            a, b = int(m_lo.group(2)), int(m_hi.group(2))
            if a > b:
                raise ValueError(f"identity range {token!r} runs backwards")
            # Zero-padded ranges (id000-id019) keep their padding.
            width = len(m_lo.group(2)) if m_lo.group(2).startswith("0") else 0
            names.extend(f"{m_lo.group(1)}{i:0{width}d}" for i in range(a, b + 1))
        else:
            names.append(token)
    if not names:
        raise ValueError(f"identity selection {spec!r} names no identities")
    return names
