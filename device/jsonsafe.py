"""JSON from untrusted bytes: no NaN/Infinity literals, bounded nesting. Standard library only."""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 32


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a deep document cannot exhaust the stack)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list)):
            depth = max(depth, level)
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return depth


def loads_json(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` refusing NaN/Infinity literals and nesting deeper than ``max_depth`` (ValueError)."""
    def refuse(literal: str) -> None:
        raise ValueError(f"{what} contains {literal}, which is not a JSON number")

    try:
        value = json.loads(data, parse_constant=refuse)
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    if json_depth(value) > max_depth:
        raise ValueError(f"{what} is nested deeper than {max_depth} levels")
    return value
