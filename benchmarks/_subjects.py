"""The two things measured: our manager and the seed baseline, wired the same way.

Both listen to the same ``room.on`` events of a real room, run one trivial
cleanup callback per ended connection, and report when a session is gone,
so that a figure can wait for "every session removed" without polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session

from .baseline import SeedCleanup


class Countdown:
    """A future that completes once :meth:`tick` has been called ``count`` times."""

    __slots__ = ("_left", "done")

    def __init__(self, count: int) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._left = count
        if count <= 0:
            self.done.set_result(None)

    def reset(self, count: int) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self._left = count
        if count <= 0:
            self.done.set_result(None)

    def tick(self, *_: Any) -> None:
        self._left -= 1
        if self._left == 0:
            self.done.set_result(None)


def noop_cleanup(session: Session) -> None:
    pass


def noop_clear_user(user_id: str | None) -> None:
    pass


def ours(
    room: rtc.Room,
    removed: Callable[..., Any] | None = None,
    cleanup: Callable[[Session], Any] = noop_cleanup,
    **config: Any,
) -> LifecycleManager:
    """Our manager attached to ``room`` with one cleanup callback; ``removed(session)`` is told."""
    manager = LifecycleManager(LifecycleConfig(**config))
    manager.add_cleanup(cleanup)
    if removed is not None:
        manager.on("removed", removed)
    manager.attach(room)
    return manager


def baseline(
    room: rtc.Room,
    removed: Callable[..., Any] | None = None,
    clear_user: Callable[[str | None], Any] = noop_clear_user,
    *,
    removal_delay: float,
) -> SeedCleanup:
    """The seed's handlers on ``room`` with one cleanup callback; ``removed(sid)`` is told."""

    def on_change(sid: str, step: str) -> None:
        if step == "removed" and removed is not None:
            removed(sid)

    seed = SeedCleanup(
        removal_delay=removal_delay, clear_user_callback=clear_user, on_change=on_change
    )
    seed.register(room)
    return seed
