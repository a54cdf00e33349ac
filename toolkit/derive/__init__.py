"""Compact students derived from a large face network: channels pruned in dependency groups, then distilled
to reproduce the teacher's embedding on unlabeled faces."""

from __future__ import annotations

from .config import DeriveConfig, load_derive_config, parse_count, validate_derive_config
from .run import DeriveResult, derive

__all__ = [
    "DeriveConfig",
    "DeriveResult",
    "derive",
    "load_derive_config",
    "parse_count",
    "validate_derive_config",
]
