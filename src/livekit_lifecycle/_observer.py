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

from .log import get_logger

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Observer", "Observers"]


class Observer:
    """Hooks the manager calls; every one is a no-op here.

    The manager calls them through :class:`Observers`, which isolates each
    one: they should not raise, and a failing one never stops a cleanup.
    """

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


_HOOKS = (
    "cleanup_started",
    "cleanup_failed",
    "cleanup_ended",
    "shutdown_started",
    "shutdown_ended",
)


class Observers(Observer):
    """The observers a manager has, called in the order they were added.

    Each call is isolated: an observer that raises is logged
    (``observer.failed``) and the lifecycle goes on, as for any callback.
    A hook no observer overrides costs one empty-tuple check.
    """

    __slots__ = ("_each", "_log", "_overriding")

    def __init__(self, *observers: Observer) -> None:
        self._each = observers
        self._log = get_logger()
        self._overriding = {
            hook: tuple(
                getattr(o, hook)
                for o in observers
                if getattr(type(o), hook) is not getattr(Observer, hook)
            )
            for hook in _HOOKS
        }
        """Hook name -> the bound hooks of the observers that override it."""

    def members(self) -> tuple[Observer, ...]:
        return self._each

    @classmethod
    def combine(cls, current: Observer, added: Observer) -> Observer:
        return cls(*current.members(), added)

    def _call(self, hook: str, *args: object) -> None:
        for bound in self._overriding[hook]:
            try:
                bound(*args)
            except Exception:
                self._log.error(
                    "observer.failed",
                    category="session",
                    observer=type(bound.__self__).__name__,
                    hook=hook,
                    exc_info=True,
                )

    def cleanup_started(self, session: Session) -> None:
        if self._overriding["cleanup_started"]:
            self._call("cleanup_started", session)

    def cleanup_failed(self, session: Session, timed_out: bool) -> None:
        self._call("cleanup_failed", session, timed_out)

    def cleanup_ended(self, session: Session) -> None:
        if self._overriding["cleanup_ended"]:
            self._call("cleanup_ended", session)

    def shutdown_started(self, sessions: int) -> None:
        self._call("shutdown_started", sessions)

    def shutdown_ended(self, timed_out: bool) -> None:
        self._call("shutdown_ended", timed_out)
