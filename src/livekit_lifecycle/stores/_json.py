"""What a store can hold: JSON values that come back exactly as they went in."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_INT", "check_json"]

MAX_DEPTH = 64
"""Nesting a stored value may have (lists and dicts inside each other)."""
MAX_INT = 2**63 - 1
"""Largest magnitude of a stored integer: what every JSON reader of a fleet (Lua, Go, a
database column) takes as an integer; a bigger one is refused rather than written and
misread, or not written at all (Python's ``json`` refuses ints of over 4,300 digits)."""


def check_json(value: Any, where: str = "value") -> None:
    """Raise :class:`TypeError` unless ``value`` survives a JSON round trip unchanged.

    Accepted: ``None``, ``bool``, ``int`` within ±(2**63 - 1), finite ``float``,
    ``str``, lists (and tuples, which come back as lists) and dicts with string
    keys, nested up to 64 levels. ``json.dumps`` alone is not enough: it turns ``{1: x}``
    into ``{"1": x}`` and writes ``NaN``, which is not JSON.
    """
    _check(value, where, 0)


def _check(value: Any, where: str, depth: int) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if -MAX_INT <= value <= MAX_INT:
            return
        raise TypeError(f"{where} is an int beyond ±(2**63 - 1): store it as a str")
    if isinstance(value, float):
        if math.isfinite(value):
            return
        raise TypeError(f"{where} is {value!r}: not representable in JSON")
    if depth >= MAX_DEPTH:
        path = where if len(where) <= 60 else f"{where[:40]}...{where[-12:]}"
        raise TypeError(f"{path} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has the key {key!r} ({type(key).__name__}): JSON keys are strings"
                )
            _check(item, f"{where}[{key!r}]", depth + 1)
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON-serialisable"
        " (a session store keeps None, bool, int, float, str, list and str-keyed dict)"
    )
