"""What both demos share: the printed timeline, and the manager every scenario runs against."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from .config import LifecycleConfig
from .manager import LifecycleManager
from .session import Session, Transition

__all__ = ["DemoManager", "OnManager", "Timeline"]

OnManager = Callable[[LifecycleManager], Awaitable[None]]
"""Called with the demo's manager before it attaches (``demo --web`` serves the page from it)."""


class Timeline:
    """Prints what the demo does: transitions as a timeline, checks, final states."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.started = time.monotonic()
        self.failures: list[str] = []
        self.write: Callable[[str], None] = lambda text: print(text, file=self.out)
        """Where lines go; a live display swaps in its own printer."""

    def title(self, text: str) -> None:
        self.write(text)

    def line(self, text: str) -> None:
        self.write(f"  {time.monotonic() - self.started:7.3f}s  {text}")

    def transition(self, session: Session, transition: Transition) -> None:
        self.line(
            f"{session.key:<6} {transition.source.value:>13} -> {transition.dest.value:<13}"
            f" {transition.trigger} (sid {transition.sid})"
        )

    def heading(self, title: str) -> None:
        self.write(f"\n== {title}")

    def check(self, label: str, ok: bool) -> None:
        self.write(f"  [{'ok' if ok else 'FAILED'}] {label}")
        if not ok:
            self.failures.append(label)

    def final_states(self, sessions: list[Session]) -> None:
        self.write("\n== Final states (every session the demo created)")
        self.write(f"  {'key':<6} {'state':<8} {'connections':>11} {'cleanups':>8}  user_id")
        for session in sessions:
            self.write(
                f"  {session.key:<6} {session.state.value:<8} {session.connections:>11}"
                f" {session.cleanups:>8}  {session.user_id}"
            )

    def verdict(self) -> int:
        self.write("")
        if self.failures:
            self.write(f"{len(self.failures)} check(s) FAILED")
            return 1
        self.write("all checks passed")
        return 0


class DemoManager:
    """The demos' manager: a cleanup that stands in for saving a transcript, counted per key.

    ``seen`` collects every session the demo created, for the final table.
    """

    def __init__(self, grace_period: float, timeline: Timeline) -> None:
        self.manager = LifecycleManager(
            LifecycleConfig(grace_period=grace_period, cleanup_timeout=2.0)
        )
        self.cleanups: dict[str, int] = {}
        self.seen: list[Session] = []
        self._timeline = timeline
        self.manager.add_cleanup(self.save_transcript)
        self.manager.on("created", self.seen.append)

    async def save_transcript(self, session: Session) -> None:
        # Stands in for real work: awaited, bounded by cleanup_timeout.
        await asyncio.sleep(0.01)
        self.cleanups[session.key] = self.cleanups.get(session.key, 0) + 1
        self._timeline.line(f"{session.key:<6} cleanup ran (user_id={session.user_id})")
