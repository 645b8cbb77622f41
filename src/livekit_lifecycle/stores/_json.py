"""What a store can hold: JSON values that come back exactly as they went in."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_json"]

_MAX_DEPTH = 64


def check_json(value: Any, where: str = "value") -> None:
    """Raise :class:`TypeError` unless ``value`` survives a JSON round trip unchanged.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists
    (and tuples, which come back as lists) and dicts with string keys, nested
    up to 64 levels. ``json.dumps`` alone is not enough: it turns ``{1: x}``
    into ``{"1": x}`` and writes ``NaN``, which is not JSON.
    """
    _check(value, where, 0)


def _check(value: Any, where: str, depth: int) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if math.isfinite(value):
            return
        raise TypeError(f"{where} is {value!r}: not representable in JSON")
    if depth >= _MAX_DEPTH:
        raise TypeError(f"{where} is nested deeper than {_MAX_DEPTH} levels")
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
