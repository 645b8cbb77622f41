"""The cleanup callbacks, run as the chart's ``cleanup`` activity.

:class:`CleanupActivity` is the implementation the manager gives the session
runtime for the activity :data:`~livekit_lifecycle.statechart.PARTICIPANT_CHART`
declares on ``disconnecting``. One path: :meth:`CleanupActivity.run` calls the
callbacks inline while they stay synchronous (the common case costs no task)
and returns the rest as a coroutine from the first awaitable on. With a
durable store the claims come first: every cleanup that became due in one loop
turn joins one batch, claimed by one task in one call to the store (one round
trip; up to four batches out at once), and each is handed back to the runtime
(:data:`~._runtime.PENDING`, ``resume``) when its answer is in. Each callback is
isolated and bounded; nothing cancels the run but a shutdown past its deadline.

Seams (internal):

- :meth:`CleanupActivity.use_claims` ``(claims, record, resume)``: ``await
  claims(sessions, answer)`` is a durable store's claim on a batch of cleanups,
  awaited before their callbacks; it calls ``answer(session, run_here, Claim |
  None)`` once per session, as soon as that session's claim is known
  (``run_here`` false: the cleanup already ran elsewhere). A session it leaves
  unanswered because it raised is logged (``manager.internal_error``,
  ``during="cleanup_claim"``) and its cleanup runs here. ``record(session, won)``
  is how the claim won reaches :attr:`Session.cleanup_claim
  <livekit_lifecycle.Session.cleanup_claim>`: the runtime writes the session's
  fields (``SessionRuntime.set_cleanup_claim``), this module never does.
  ``resume(session, rest)`` is the runtime's side of :data:`~._runtime.PENDING`
  (``SessionRuntime.resume``).
- :attr:`CleanupActivity.observer` (an :class:`~._observer.Observer`): told
  when a run starts and ends, and about each callback that fails or times out.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from ._callbacks import Outcome, Report, Supervisor
from ._log import ManagerLog
from ._observer import Observer
from ._runtime import PENDING, Pending
from .session import Session, reason_name

if TYPE_CHECKING:
    from .stores import Claim

_BATCHES_IN_FLIGHT = 4
"""Claim batches out at once, at most (a claim's round trip is ~3 turns of a busy loop)."""

__all__ = [
    "ClaimAnswer",
    "CleanupActivity",
    "CleanupCallback",
    "CleanupClaims",
    "RecordClaim",
    "UserActivity",
    "user_activity",
]

CleanupCallback = Callable[[Session], Any]
"""``fn(session)``, sync or async; called while the session is ``disconnecting``."""
ClaimAnswer = Callable[[Session, bool, "Claim | None"], None]
"""``answer(session, run_here, claim)``: one session's claim is known."""
CleanupClaims = Callable[[Sequence[Session], ClaimAnswer], Awaitable[None]]
"""``await claims(sessions, answer)``: claim the cleanups of ``sessions``, answering each."""
RecordClaim = Callable[[Session, "Claim | None"], None]
"""``record(session, claim)``: the claim of the session's current cleanup (None: none yet)."""
Resume = Callable[[Session, "Coroutine[Any, Any, None] | None"], None]
"""``resume(session, rest)``: an activity that returned ``PENDING`` went on (see ``_runtime``)."""


class CleanupActivity:
    """Runs the registered cleanup callbacks for one session (see the module doc)."""

    __slots__ = (
        "_claimer",
        "_claims",
        "_flying",
        "_log",
        "_record_claim",
        "_resume",
        "_supervisor",
        "_waiting",
        "callbacks",
        "observer",
    )

    def __init__(self, log: ManagerLog, supervisor: Supervisor) -> None:
        self._log = log
        self._supervisor = supervisor
        self.callbacks: list[CleanupCallback] = []
        """In registration order (``LifecycleManager.add_cleanup`` appends)."""
        self._claims: CleanupClaims | None = None
        self._record_claim: RecordClaim = _unrecorded
        self._resume: Resume = _unwired
        self.observer: Observer = Observer()
        self._waiting: list[tuple[Session, contextvars.Context]] = []
        """The cleanups waiting for their claim to be sent (the next batch)."""
        self._claimer: asyncio.Task[None] | None = None
        """The task that will send the next batch, until it has taken it."""
        self._flying: set[asyncio.Task[None]] = set()
        """The batches started and not finished (the claimer's included)."""

    def use_claims(
        self,
        claims: CleanupClaims | None,
        record: RecordClaim | None = None,
        resume: Resume | None = None,
    ) -> None:
        """Await ``claims`` before the callbacks (None: run them at once, no claim asked);
        ``record`` is told the claim won (and None when a run starts); ``resume`` takes
        each cleanup back to the runtime once its claim is known."""
        self._claims = claims
        self._record_claim = record or _unrecorded
        self._resume = resume or _unwired

    def run(self, session: Session) -> Coroutine[Any, Any, None] | Pending | None:
        """The activity: ``None`` when every callback ran inline, else a coroutine for
        the rest, or ``PENDING`` when the store's claim has to be awaited first."""
        claims = self._claims
        if claims is None:
            return self._run(session)
        self._record_claim(session, None)  # the previous connection's claim is not this run's
        # The callbacks run in the context the runtime runs this activity in (a
        # tracing span...), as a task created here would.
        self._waiting.append((session, contextvars.copy_context()))
        self._next_batch(claims)
        return PENDING

    def _next_batch(self, claims: CleanupClaims) -> None:
        # One task claims for every cleanup that became due this turn: it starts after
        # they have all joined (the runtime runs them in one go). Up to
        # _BATCHES_IN_FLIGHT batches are out at once, so a cleanup usually waits one
        # round trip, not the batch before it as well; the bound keeps a slow store
        # from getting a call (and a connection) per turn.
        if self._claimer is not None or len(self._flying) >= _BATCHES_IN_FLIGHT:
            return  # the cleanup joins the batch that starts next
        task = asyncio.get_running_loop().create_task(
            self._claim_batch(claims), name="livekit-lifecycle:cleanup-claims"
        )
        self._claimer = task
        self._flying.add(task)
        task.add_done_callback(functools.partial(self._landed, claims))
        self._supervisor.track(task)

    async def _claim_batch(self, claims: CleanupClaims) -> None:
        contexts = dict(self._waiting)
        self._waiting = []
        self._claimer = None  # the cleanups due from now on make the next batch
        try:
            await claims(list(contexts), self._answer_in(contexts))
        except Exception:
            for session in list(contexts):
                self._log.internal_error(session, "cleanup_claim")
                self._answer_in(contexts)(session, True, None)

    def _landed(self, claims: CleanupClaims, task: asyncio.Task[None]) -> None:
        self._flying.discard(task)
        if self._claimer is task:
            self._claimer = None  # cancelled before it took its batch
        if task.cancelled():
            self._waiting = []  # a shutdown past its deadline abandons them
        elif self._waiting:
            self._next_batch(claims)

    def _answer_in(self, contexts: dict[Session, contextvars.Context]) -> ClaimAnswer:
        def answer(session: Session, here: bool, won: Claim | None) -> None:
            context = contexts.pop(session, None)
            if context is not None:  # answered once
                context.run(self._claimed, session, here, won)

        return answer

    def _claimed(self, session: Session, here: bool, won: Claim | None) -> None:
        rest = None
        try:
            self._record_claim(session, won)
            if here:
                rest = self._run(session)
            else:
                self.observer.cleanup_ended(session)  # observability hook
        except Exception:
            self._log.internal_error(session, "cleanup")
        self._resume(session, rest)

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


def _unwired(session: Session, rest: Coroutine[Any, Any, None] | None) -> None:
    raise RuntimeError("CleanupActivity.resume is not wired")  # pragma: no cover
