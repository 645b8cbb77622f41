"""The session runtime's own record of one session: what the user's view does not show."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from livekit import rtc

if TYPE_CHECKING:
    from ._events import Input
    from .session import Session

__all__ = ["Bookkeeping", "record"]


class Bookkeeping:
    """The runtime's own record of one session: only what the user's view does not show."""

    __slots__ = ("epoch", "pending", "queue", "superseded", "timers")

    def __init__(self) -> None:
        self.queue: deque[Input] | None = None
        """Inputs waiting for the session's running work (a step, an activity)."""
        self.timers: tuple[asyncio.TimerHandle, ...] = ()
        """The delayed edges' timers armed on entering the current state."""
        self.epoch = 0
        """Counts entries into states with delayed edges: a timer input carries it."""
        self.pending: rtc.RemoteParticipant | None = None
        """The connection that took over, waiting while the old one's activity runs."""
        self.superseded: dict[str, None] | None = None
        """Sids of replaced connections (insertion-ordered, oldest forgotten first)."""


def record(session: Session) -> Bookkeeping:
    """``session``'s bookkeeping record, made on first use."""
    rec = session._record
    if rec is None:
        rec = session._record = Bookkeeping()
    return rec
