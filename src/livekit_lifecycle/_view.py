"""A read-only window on a manager's parts, for the code that checks or sizes it.

:class:`InternalView` is the one way code outside the manager
(:mod:`livekit_lifecycle.invariants`, :mod:`livekit_lifecycle.agents`) reads the
runtime's indexes and bookkeeping: what it may rely on is listed here, and
nothing else. It never changes anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from livekit import rtc

if TYPE_CHECKING:
    from .manager import LifecycleManager
    from .session import Session

__all__ = ["InternalView"]


class InternalView:
    """A live, read-only window on a manager's indexes and bookkeeping."""

    __slots__ = ("_manager",)

    def __init__(self, manager: LifecycleManager) -> None:
        self._manager = manager

    @property
    def sessions(self) -> Mapping[str, Session]:
        """Live sessions by key."""
        return self._manager._runtime.sessions

    @property
    def by_sid(self) -> Mapping[str, Session]:
        """Live sessions by the sid of their current connection."""
        return self._manager._runtime.by_sid

    @property
    def tasks(self) -> frozenset[asyncio.Future[Any]]:
        """Activities, async listeners and the restore, not yet done or just done."""
        return frozenset(self._manager._supervisor.tasks)

    @property
    def waiter_count(self) -> int:
        """Pending ``wait_for`` calls."""
        return sum(len(waiters) for waiters in self._manager._notifier.waiters.values())

    @property
    def handler_count(self) -> int:
        """Handlers registered on the attached room."""
        return len(self._manager._intake.handlers)

    @property
    def resource_count(self) -> int:
        """Resources still to close."""
        return len(self._manager._resources)

    @property
    def room(self) -> rtc.Room | None:
        """The attached room."""
        return self._manager._intake.room

    @property
    def closed(self) -> bool:
        """Whether shutdown has started."""
        return self._manager._runtime.closing

    @property
    def durable(self) -> bool:
        """Whether the manager keeps its sessions in a durable store."""
        return self._manager._persist is not None

    def timers(self, session: Session) -> tuple[asyncio.TimerHandle, ...]:
        """The timers armed for ``session``'s delayed edges."""
        rec = session._record
        return () if rec is None else rec.timers

    def pending(self, session: Session) -> rtc.RemoteParticipant | None:
        """A takeover's connection waiting while the old one is cleaned."""
        rec = session._record
        return None if rec is None else rec.pending

    def busy(self, session: Session) -> bool:
        """Whether ``session`` has work running (a step, an activity)."""
        return self._manager._runtime.busy(session)

    def queued(self, session: Session) -> int:
        """Inputs waiting behind ``session``'s running work."""
        return self._manager._runtime.queued(session)
