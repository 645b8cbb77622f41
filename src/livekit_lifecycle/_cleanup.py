"""The cleanup callbacks, run as the chart's ``cleanup`` activity.

:class:`CleanupActivity` is the implementation the manager gives the session
runtime for the activity :data:`~livekit_lifecycle.statechart.PARTICIPANT_CHART`
declares on ``disconnecting``. One path: :meth:`CleanupActivity.run` calls the
callbacks inline while they stay synchronous (the common case costs no task)
and returns the rest as a coroutine from the first awaitable on, or at once
when a durable store's claim has to be awaited first. Each callback is
isolated and bounded; nothing cancels the run but a shutdown past its deadline.

Seams (internal):

- :meth:`CleanupActivity.use_claim` ``(claim, record)``: ``await claim(session) ->
  (run_here, Claim | None)`` is a durable store's claim on the cleanup, awaited
  before the callbacks; ``run_here`` false means the cleanup already ran
  elsewhere. A claim that raises is logged (``manager.internal_error``,
  ``during="cleanup_claim"``) and the cleanup runs here. ``record(session, won)``
  is how the claim won reaches :attr:`Session.cleanup_claim
  <livekit_lifecycle.Session.cleanup_claim>`: the runtime writes the session's
  fields (``SessionRuntime.set_cleanup_claim``), this module never does.
- :attr:`CleanupActivity.observer` (an :class:`~._observer.Observer`): told
  when a run starts and ends, and about each callback that fails or times out.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._callbacks import Outcome, Report, Supervisor
from ._log import ManagerLog
from ._observer import Observer
from .session import Session, reason_name

if TYPE_CHECKING:
    from .stores import Claim

__all__ = [
    "CleanupActivity",
    "CleanupCallback",
    "CleanupClaim",
    "RecordClaim",
    "UserActivity",
    "user_activity",
]

CleanupCallback = Callable[[Session], Any]
"""``fn(session)``, sync or async; called while the session is ``disconnecting``."""
CleanupClaim = Callable[[Session], Awaitable["tuple[bool, Claim | None]"]]
"""``await claim(session)``: (run the cleanup here?, the claim won, if the store gave one)."""
RecordClaim = Callable[[Session, "Claim | None"], None]
"""``record(session, claim)``: the claim of the session's current cleanup (None: none yet)."""


class CleanupActivity:
    """Runs the registered cleanup callbacks for one session (see the module doc)."""

    def __init__(self, log: ManagerLog, supervisor: Supervisor) -> None:
        self._log = log
        self._supervisor = supervisor
        self.callbacks: list[CleanupCallback] = []
        """In registration order (``LifecycleManager.add_cleanup`` appends)."""
        self._claim: CleanupClaim | None = None
        self._record_claim: RecordClaim = _unrecorded
        self.observer: Observer = Observer()

    def use_claim(self, claim: CleanupClaim | None, record: RecordClaim | None = None) -> None:
        """Await ``claim`` before the callbacks (None: run them at once, no claim asked);
        ``record`` is told the claim won (and None when a run starts)."""
        self._claim = claim
        self._record_claim = record or _unrecorded

    def run(self, session: Session) -> Coroutine[Any, Any, None] | None:
        """The activity: ``None`` when every callback ran inline, else a coroutine for the rest."""
        claim = self._claim
        if claim is not None:
            return self._claimed_run(session, claim)
        return self._run(session)

    async def _claimed_run(self, session: Session, claim: CleanupClaim) -> None:
        record = self._record_claim
        record(session, None)  # the previous connection's claim is not this run's
        try:
            here, won = await claim(session)
        except Exception:
            self._log.internal_error(session, "cleanup_claim")
            here, won = True, None
        record(session, won)
        if not here:
            self.observer.cleanup_ended(session)  # observability hook
            return
        rest = self._run(session)
        if rest is not None:
            await rest

    def _run(self, session: Session) -> Coroutine[Any, Any, None] | None:
        self.observer.cleanup_started(session)  # observability hook
        if self._log.enabled(logging.INFO):
            self._log.session(
                logging.INFO,
                "cleanup.started",
                "cleanup",
                session,
                tracks=len(session.tracks),
                reason=reason_name(session.disconnect_reason),
            )
        callbacks = list(self.callbacks)
        for index, callback in enumerate(callbacks):
            try:
                result = callback(session)
            except (Exception, asyncio.CancelledError) as exc:
                self._report(callback, session)(Outcome.FAILED, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._rest(session, result, callback, callbacks[index + 1 :])
        self.observer.cleanup_ended(session)  # observability hook
        return None

    async def _rest(
        self,
        session: Session,
        awaitable: Awaitable[Any],
        callback: CleanupCallback,
        rest: list[CleanupCallback],
    ) -> None:
        await self._bounded(session, callback, lambda: awaitable)
        for later in rest:
            await self._bounded(session, later, functools.partial(later, session))
        self.observer.cleanup_ended(session)  # observability hook

    async def _bounded(
        self, session: Session, callback: CleanupCallback, call: Callable[[], Any]
    ) -> None:
        report = self._report(callback, session)
        try:
            await self._supervisor.run(call, (), report)
        except asyncio.CancelledError:
            if self._supervisor.cancelling:
                raise
            # Not ours: a callback cancelled the task running it. Keep the
            # lifecycle going; the callback is the one that failed.
            _uncancel_current_task()
            report(Outcome.FAILED, asyncio.CancelledError("cancelled the cleanup runner"))

    def _report(self, callback: CleanupCallback, session: Session) -> Report:
        observer = self.observer

        def failed(outcome: Outcome) -> None:
            observer.cleanup_failed(session, outcome is Outcome.TIMED_OUT)  # observability hook

        return self._log.reporter("cleanup", callback, session, "cleanup", also=failed)


UserActivity = Callable[[Session], Any]
"""An activity the application implements: ``fn(session)``, sync or async (see
``LifecycleManager(activities=...)``)."""


def user_activity(
    name: str, fn: UserActivity, log: ManagerLog, supervisor: Supervisor
) -> Callable[[Session], Coroutine[Any, Any, None] | None]:
    """``fn`` as an activity implementation: isolated and bounded like a cleanup callback."""

    def run(session: Session) -> Coroutine[Any, Any, None] | None:
        report = log.reporter(f"activity:{name}", fn, session, "session")
        try:
            result = fn(session)
        except (Exception, asyncio.CancelledError) as exc:
            report(Outcome.FAILED, exc)
            return None
        if result is None or not inspect.isawaitable(result):
            return None
        return _bounded(result, report, supervisor)

    return run


async def _bounded(awaitable: Awaitable[Any], report: Report, supervisor: Supervisor) -> None:
    await supervisor.run(lambda: awaitable, (), report)


def _unrecorded(session: Session, claim: Claim | None) -> None:
    return None


def _uncancel_current_task() -> None:
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)  # Python >= 3.11 counts cancel requests
    if uncancel is not None:
        uncancel()
