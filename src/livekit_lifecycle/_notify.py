"""Telling the application: ``on(...)`` listeners and ``wait_for`` waiters.

The session runtime calls :meth:`Notifier.created` and :meth:`Notifier.changed`
(its :class:`~._runtime.SessionEvents`); nothing else of the runtime knows
there are listeners.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

from ._callbacks import Outcome, Supervisor, call_bounded
from ._emitter import Listeners
from .statechart import State, Statechart

if TYPE_CHECKING:
    from ._log import ManagerLog
    from .session import Session, Transition

__all__ = ["Notifier"]


class Notifier:
    """A manager's listeners and waiters, told about every session created and changed."""

    __slots__ = ("_final", "_listening", "_log", "_supervisor", "listeners", "waiters")

    def __init__(self, chart: Statechart, log: ManagerLog, supervisor: Supervisor) -> None:
        self._log = log
        self._supervisor = supervisor
        self._final = tuple(chart.final)
        self.listeners = Listeners()
        self._listening = self.listeners.by_name
        self.waiters: dict[str, list[tuple[State, asyncio.Future[Session]]]] = {}
        """Session key -> the ``wait_for`` calls waiting on it (the state, the future)."""

    def created(self, session: Session) -> None:
        """A session was made (or restored): waiters first, then ``created`` listeners."""
        if self.waiters:
            self.resolve(session)
        if self._listening["created"]:
            self.emit("created", session)

    def changed(self, session: Session, transition: Transition) -> None:
        """``session`` changed state (``transition`` is recorded in its history)."""
        if self.waiters:
            self.resolve(session)
        listening = self._listening
        if listening["state_changed"]:
            self.emit("state_changed", session, transition)
        dest = transition.dest
        if dest in self._final:
            if listening["removed"]:
                self.emit("removed", session)
        elif dest is State.RECONNECTED and listening["reconnected"]:
            self.emit("reconnected", session)

    def resolve(self, session: Session) -> None:
        waiters = self.waiters.get(session._key)
        if not waiters:
            return
        for state, future in waiters:
            if state is session._state and not future.done():
                future.set_result(session)

    def emit(self, name: str, *args: Any) -> None:
        """Call ``name``'s listeners: sync ones inline, async ones as bounded tasks."""
        for listener in self.listeners.take(name):
            try:
                result = listener(*args)
            except Exception as exc:
                self._report(name, listener, args[0])(Outcome.FAILED, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                report = self._report(name, listener, args[0])
                supervisor = self._supervisor
                # Bounded by cleanup_timeout, not by a shutdown's deadline: a shutdown
                # cancels what is still running at its deadline (shutdown.timeout).
                task = asyncio.get_running_loop().create_task(
                    call_bounded(
                        lambda aw=result: aw, (), supervisor.timeout, report, supervisor.abandoned
                    )
                )
                supervisor.track(task)

    def _report(self, name: str, listener: object, session: Session) -> Any:
        return self._log.reporter(f"listener:{name}", listener, session, "session")

    def close(self) -> None:
        """The manager closed: every waiter still waiting gets a ``RuntimeError``."""
        for waiters in self.waiters.values():
            for _, future in waiters:
                if not future.done():
                    future.set_exception(RuntimeError("LifecycleManager closed"))
        self.waiters.clear()
