""":class:`SessionData`: a session's application data, checked for a store at assignment."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._json import check_json

__all__ = ["SessionData"]


class SessionData(dict[str, Any]):
    """A ``dict`` that refuses, at assignment, what a session store could not keep.

    Used as :attr:`Session.data <livekit_lifecycle.Session.data>` when the
    manager's store outlives the process: ``data["x"] = object()`` raises
    :class:`TypeError` there and then, instead of a write failing later, out
    of sight. Still a ``dict`` (``isinstance`` checks and ``json.dumps`` work).

    Only assignment through this mapping is checked: a list stored in it and
    mutated in place (``data["log"].append(...)``) is checked when the session
    is next written, and a failure then is logged (``store.unserialisable``),
    counted and the key's previous record kept.

    Every change made through the mapping (assignment, ``del``, ``pop``,
    ``clear``...) has the session written behind; an in-place change of a
    nested value is written with the session's next change or TTL refresh.
    """

    __slots__ = ("_on_change",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._on_change: Callable[[], None] | None = None
        if args or kwargs:
            self.update(*args, **kwargs)

    @classmethod
    def observed(cls, on_change: Callable[[], None], initial: Any = ()) -> SessionData:
        """A checked copy of ``initial`` that calls ``on_change()`` after every change."""
        data = cls(initial) if initial else cls()  # every new session: no update() for {}
        data._on_change = on_change
        return data

    def replaced(self, value: Any) -> SessionData:
        """A checked copy of ``value`` observed like this mapping, its change reported
        (``session.data = {...}`` with a store: the new mapping is written behind too)."""
        replacement = SessionData.observed(self._on_change or _nothing, value)
        replacement._changed()
        return replacement

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def __setitem__(self, key: str, value: Any) -> None:
        _check_item(key, value)
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed()

    def pop(self, key: str, *default: Any) -> Any:
        value = super().pop(key, *default)
        self._changed()
        return value

    def popitem(self) -> tuple[str, Any]:
        item = super().popitem()
        self._changed()
        return item

    def clear(self) -> None:
        super().clear()
        self._changed()

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self[key] = default
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 positional argument, got {len(args)}")
        items: list[tuple[Any, Any]] = []
        if args:
            source = args[0]
            if isinstance(source, dict) or isinstance(source, Mapping):  # noqa: SIM101 (dict first: the ABC check is slow)
                items.extend(source.items())
            elif hasattr(source, "keys"):
                items.extend((k, source[k]) for k in source.keys())  # noqa: SIM118 (keys() is the protocol)
            else:
                items.extend(_pairs(source))
        items.extend(kwargs.items())
        for key, value in items:  # all or nothing: check every item before storing one
            _check_item(key, value)
        for key, value in items:
            super().__setitem__(key, value)
        if items:
            self._changed()

    def __ior__(self, other: Any) -> SessionData:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __repr__(self) -> str:
        return f"SessionData({dict.__repr__(self)})"


def _nothing() -> None:
    return None


def _pairs(source: Iterable[Any]) -> list[tuple[Any, Any]]:
    pairs = []
    for item in source:
        key, value = item
        pairs.append((key, value))
    return pairs


def _check_item(key: Any, value: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"session data keys must be str, got {key!r} ({type(key).__name__})")
    check_json(value, f"session data[{key!r}]")
