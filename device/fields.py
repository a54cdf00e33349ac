"""Field validators shared by every schema (probe plan, manifest, quantization recipe): one wording for
"FIELD must be WHAT, got VALUE", with the schema's own error class. Standard library only."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON and TOML tell them apart; Python does not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def require(ok: bool, field: str, want: str, value: Any, error: type[ValueError] = ValueError) -> None:
    """Raise ``error("FIELD must be WANT, got VALUE")`` unless ``ok`` (the value cut to 80 characters)."""
    if not ok:
        raise error(f"{field} must be {want}, got {repr(value)[:80]}")


def require_type(value: Any, kind: type, field: str, want: str, ok=lambda v: True,
                 error: type[ValueError] = ValueError) -> None:
    """``value`` is a ``kind`` (an int is never a bool) for which ``ok`` holds."""
    right = is_int(value) if kind is int else isinstance(value, kind)
    require(right and ok(value), field, want, value, error)


def require_pair(value: Any, field: str, numbers: bool = False, error: type[ValueError] = ValueError) -> None:
    """A list of two integers (or of two finite numbers)."""
    test = is_number if numbers else is_int
    require(isinstance(value, list) and len(value) == 2 and all(test(v) for v in value), field,
            "a list of two " + ("numbers" if numbers else "integers"), value, error)
