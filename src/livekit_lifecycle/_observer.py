"""The manager's one internal seam for metrics and tracing: hooks around cleanup runs and shutdown.

Everything else the observability features need comes from outside the
manager (``manager.sessions`` and ``manager.stats`` read at scrape time, the
``state_changed`` notification); only what no public surface tells is
reported here: when a cleanup run starts and ends and whether a callback in
it failed or timed out, and when a shutdown starts and ends. The default
:class:`Observer` does nothing, so a manager without metrics or tracing pays
two empty method calls per cleanup run and nothing per event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Observer", "Observers"]


class Observer:
    """Hooks the manager calls; every one is a no-op here. Must never raise."""

    __slots__ = ()

    def members(self) -> tuple[Observer, ...]:
        """The observers this one stands for (none for the no-op)."""
        return () if type(self) is Observer else (self,)

    def cleanup_started(self, session: Session) -> None:
        """The session's cleanup callbacks are about to run (it is ``disconnecting``)."""

    def cleanup_failed(self, session: Session, timed_out: bool) -> None:
        """One cleanup callback of the current run raised (or timed out)."""

    def cleanup_ended(self, session: Session) -> None:
        """Every cleanup callback of the run returned, failed or timed out."""

    def shutdown_started(self, sessions: int) -> None:
        """``aclose()`` began; ``sessions`` were present."""

    def shutdown_ended(self, timed_out: bool) -> None:
        """The shutdown is over (``timed_out``: runners had to be cancelled at the deadline)."""


class Observers(Observer):
    """Several observers, called in the order they were added."""

    __slots__ = ("_each",)

    def __init__(self, *observers: Observer) -> None:
        self._each = observers

    def members(self) -> tuple[Observer, ...]:
        return self._each

    @classmethod
    def combine(cls, current: Observer, added: Observer) -> Observer:
        if type(current) is Observer:
            return added
        if isinstance(current, Observers):
            return cls(*current._each, added)
        return cls(current, added)

    def cleanup_started(self, session: Session) -> None:
        for observer in self._each:
            observer.cleanup_started(session)

    def cleanup_failed(self, session: Session, timed_out: bool) -> None:
        for observer in self._each:
            observer.cleanup_failed(session, timed_out)

    def cleanup_ended(self, session: Session) -> None:
        for observer in self._each:
            observer.cleanup_ended(session)

    def shutdown_started(self, sessions: int) -> None:
        for observer in self._each:
            observer.shutdown_started(sessions)

    def shutdown_ended(self, timed_out: bool) -> None:
        for observer in self._each:
            observer.shutdown_ended(timed_out)
