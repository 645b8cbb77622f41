"""Notification listeners in livekit's ``.on("event", cb)`` style."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args

from ._callbacks import CallbackKey

__all__ = ["NOTIFICATIONS", "Listener", "Listeners", "NotificationName"]

NotificationName = Literal["created", "state_changed", "reconnected", "removed"]
NOTIFICATIONS: frozenset[str] = frozenset(get_args(NotificationName))

Listener = Callable[..., Any]
L = TypeVar("L", bound=Listener)


class Listeners:
    """Registered listeners per notification, in registration order.

    Adding a listener that is already registered (by ``_callbacks.same_callable``:
    ``self.handler`` twice, equal partials) keeps one registration.
    """

    __slots__ = ("by_name",)

    def __init__(self) -> None:
        self.by_name: dict[str, dict[CallbackKey, tuple[Listener, bool]]] = {
            name: {} for name in NOTIFICATIONS
        }
        """Notification -> its listeners (-> the listener and once). Read-only outside
        this class; a plain dict so "does anyone listen?", asked on every transition,
        costs one lookup."""

    def add(self, name: str, listener: Listener, *, once: bool) -> None:
        self._check(name)
        if not callable(listener):
            raise TypeError(f"listener for {name!r} must be callable, got {listener!r}")
        self.by_name[name][CallbackKey(listener)] = (listener, once)

    def remove(self, name: str, listener: Listener) -> None:
        self._check(name)
        self.by_name[name].pop(CallbackKey(listener), None)

    def take(self, name: str) -> list[Listener]:
        """The listeners to call now; ``once`` listeners are removed as they are taken."""
        registered = self.by_name[name]
        if not registered:
            return []
        listeners = []
        for key, (listener, once) in list(registered.items()):
            listeners.append(listener)
            if once:
                del registered[key]
        return listeners

    @staticmethod
    def _check(name: str) -> None:
        if name not in NOTIFICATIONS:
            raise ValueError(
                f"unknown event {name!r}: expected one of {', '.join(sorted(NOTIFICATIONS))}"
            )
