"""Configuration numbers: checked once, with a ``ValueError`` that names the field."""

from __future__ import annotations

import math

__all__ = ["MAX_SECONDS", "require_count", "require_seconds"]

MAX_SECONDS = 1e9
"""Longest duration any setting takes (about 31 years). Anything longer is a mistake, and
would overflow somewhere downstream: Redis refuses a TTL past ~2.9e8 years in ms only, but
``round(inf)`` or an event-loop timer in the year 10^300 fail long before."""


def require_seconds(name: str, value: object, *, allow_zero: bool) -> float:
    """``value`` as a float of seconds, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0f} seconds, got {value!r}")
    return float(value)


def require_count(name: str, value: object, *, minimum: int, maximum: int) -> int:
    """``value`` as an int within ``minimum..maximum``, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be within {minimum}..{maximum}, got {value!r}")
    return value
