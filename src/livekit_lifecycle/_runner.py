"""The per-session runner: ordered input queue, timers, and the one cleanup runner.

Every input for a session goes through :meth:`_Runner._feed`: it is applied
at once when the session is idle, queued behind the running work otherwise.
A step that starts a cleanup hands the session to the cleanup runner:

- all cleanup callbacks synchronous (the common case): :meth:`_Runner._continue`
  puts the session in the loop's next-turn batch (one ``call_soon`` callback,
  :meth:`_Runner._run_cleanup_batch`, for every session that became due
  meanwhile), which runs :meth:`_Runner._run_cleanup` inline;
- otherwise (an async callback, or a cleanup claim hook is set) one task per
  session runs :meth:`_Runner._cleanup`, which is the same
  :meth:`_Runner._run_cleanup` plus, when set, the claim.

:meth:`_Runner._run_cleanup` calls callbacks inline while they stay
synchronous and returns the rest as a coroutine (:meth:`_Runner._cleanup_rest`)
from the first awaitable on. Inputs queued meanwhile are drained afterwards,
in order (:meth:`_Runner._drain`); nothing ever cancels a cleanup.

Seams (internal; zero cost while unused)
----------------------------------------
For a session store:

- :meth:`_Runner._add_transition_hook` ``(hook(session))``: called after every
  change of state, once the transition is recorded (write-behind
  persistence). Installed into the compiled machine's ``on_enter`` lists, so
  no check runs per transition while there is none. Internal edges (a track
  published while ``active``) do not change state and do not call it.
- :attr:`_Runner._claim_cleanup` ``(async claim(session) -> bool)``: set it
  through :meth:`_Runner._set_cleanup_claim`. Awaited before a session's
  cleanup callbacks; ``False`` means cleanup already ran elsewhere, and the
  session goes straight to ``cleaned``. Setting it moves cleanup to the task
  path; unset, the synchronous batch path is untouched. A claim that raises
  is logged (``manager.internal_error``, ``during="cleanup_claim"``) and the
  cleanup runs here.

For metrics and tracing, ``_Core._observer`` (:class:`~livekit_lifecycle._observer.Observer`,
a no-op unless one is enabled) is told, each call marked ``# observability hook``:

- a cleanup run's start and end: :meth:`_Runner._log_cleanup_started` and
  :meth:`_Runner._end_cleanup`; per-callback failures and timeouts in
  :meth:`~livekit_lifecycle._core._Core._reporter`.
- a shutdown's start and end: ``LifecycleManager._shutdown``.

Ignored events need no hook: every one bumps an ``ignored_*`` counter in
``stats``, which metrics read when scraped.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from . import _actions
from ._callbacks import Outcome, call_bounded
from ._core import CleanupCallback, _Core
from ._events import Input, InputKind
from ._machine import EventData, build_machine
from .config import LifecycleConfig
from .invariants import check_session
from .session import Session, Transition, reason_name
from .statechart import State

if TYPE_CHECKING:
    from .manager import LifecycleManager

__all__: list[str] = []

_CleanupBatch = tuple[list[Session], "asyncio.Future[None]"]
_ACTIVE = _actions._ACTIVE
# Bound once: an enum member read through its class costs a lookup per use.
_CONNECT = InputKind.CONNECTED
_ACTIVATE = InputKind.ACTIVE
_PUBLISHED = InputKind.TRACK_PUBLISHED
CleanupClaim = Callable[[Session], Awaitable[bool]]
"""``await claim(session)``: ``True`` to run the cleanup here, ``False`` when it ran elsewhere."""


class _Runner(_Core):
    def __init__(self, config: LifecycleConfig | None = None) -> None:
        super().__init__(config)
        self._cleanup_batch: _CleanupBatch | None = None
        """Sessions whose synchronous cleanup runs on the loop's next turn, and its future."""
        self._claim_cleanup: CleanupClaim | None = None
        self._machine = build_machine(
            self._chart,
            guards=_actions.guards(self),
            effects=_actions.effects(self),
            on_enter={State.GRACE: self._enter_grace, State.REMOVED: self._enter_removed},
            on_exit={State.GRACE: self._exit_grace},
            after_state_change=self._after_state_change,
        )
        self._events = self._machine.events
        # What each input means comes from the chart (see statechart.ChartInput); a chart
        # input the runtime has no InputKind for fails here, at construction.
        chart = self._chart
        kinds = {kind.value: kind for kind in InputKind}
        self._dispatch = {kinds[name]: table for name, table in chart.input_triggers().items()}
        self._input_category = {kinds[i.name]: i.category for i in chart.inputs}
        self._duplicate_in = {kinds[i.name]: i.duplicate_in for i in chart.inputs}
        self._trigger_category = {trigger: chart.category(trigger) for trigger in chart.triggers}
        self._state_by_name = dict(State.__members__)
        self._sources = {
            trigger: frozenset(State[name] for name in event.transitions)
            for trigger, event in self._events.items()
        }
        self._automatic = {
            state: tuple(self._events[t] for t in self._chart.automatic_triggers(state))
            for state in self._chart.states
        }

    # ------------------------------------------------------------------ seams

    def _add_transition_hook(self, hook: Callable[[Session], None]) -> None:
        """Call ``hook(session)`` after every change of state (see the module docstring)."""

        def after(ev: EventData) -> None:
            hook(ev.model)

        for state in self._chart.states:
            self._machine.get_state(state).on_enter.append(after)
        self._machine.freeze()

    def _set_cleanup_claim(self, claim: CleanupClaim | None) -> None:
        """Await ``claim(session)`` before each cleanup (see the module docstring)."""
        self._claim_cleanup = claim
        if claim is not None:
            self._async_cleanups = True
        else:
            self._async_cleanups = any(inspect.iscoroutinefunction(c) for c in self._cleanups)

    def _route(self, inp: Input) -> None:
        """Route an input to its session afresh: :class:`~._intake._Intake` implements it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ per-session processing

    def _feed(self, session: Session, inp: Input) -> None:
        """Process ``inp`` now if the session is idle, else queue it behind the running work.

        Synchronous steps run inline, so a state change is visible as soon
        as the room event has been emitted. Cleanup runs on the loop's next
        turn (see :meth:`_continue`); whatever queues up meanwhile is drained
        after it, in order, and nothing ever cancels it.
        """
        if session._busy:
            if session._queue is None:
                session._queue = deque()
            session._queue.append(inp)
            return
        session._busy = True
        needs_cleanup = self._step(session, inp)
        if needs_cleanup or session._queue:
            self._continue(session, needs_cleanup)
        else:  # the common case, without _continue's call
            session._busy = False
            session._queue = None

    def _continue(self, session: Session, needs_cleanup: bool) -> None:
        """Drain the session's queue synchronously up to the next cleanup, then schedule it."""
        if not needs_cleanup and not self._drain_queue(session):
            session._busy = False
            session._queue = None
            return
        loop = asyncio.get_running_loop()
        if self._async_cleanups:
            self._track(
                loop.create_task(
                    self._drain(session, self._cleanup(session)),
                    name=f"livekit-lifecycle:{session._key}",
                )
            )
            return
        # Every cleanup callback is synchronous: run them on the loop's next turn
        # (the session is seen `disconnecting` until then, as with a task) from
        # one plain loop callback for every session whose cleanup became due
        # meanwhile, which costs a fraction of a task each. Its future lets
        # idle() and aclose() wait for it like for any task.
        batch = self._cleanup_batch
        if batch is None:
            done: asyncio.Future[None] = loop.create_future()
            self._track(done)
            batch = self._cleanup_batch = ([], done)
            loop.call_soon(self._run_cleanup_batch, batch)
        batch[0].append(session)

    def _run_cleanup_batch(self, batch: _CleanupBatch) -> None:
        sessions, done = batch
        # Cleanups that become due from here on (a queued takeover's) go to the next turn.
        self._cleanup_batch = None
        if done.done():  # cancelled by a shutdown past its deadline
            for session in sessions:
                session._busy = False
            return
        ran = 0
        try:
            for session in sessions:
                ran += 1
                self._cleanup_now(session)
        finally:
            done.set_result(None)
            # Only a BaseException from a callback (KeyboardInterrupt...) gets here
            # early: the sessions after it still get their cleanup, next turn.
            for session in sessions[ran:]:
                self._continue(session, True)

    def _cleanup_now(self, session: Session) -> None:
        try:
            rest = self._run_cleanup(session)
            if rest is None:
                self._continue(session, False)
            else:
                self._track(
                    asyncio.get_running_loop().create_task(
                        self._drain(session, rest), name=f"livekit-lifecycle:{session._key}"
                    )
                )
        except Exception:
            session._busy = False
            self._internal_error(session, "cleanup")

    async def _drain(self, session: Session, work: Coroutine[Any, Any, None]) -> None:
        try:
            while True:
                await work
                if not self._drain_queue(session):
                    return
                work = self._cleanup(session)
        finally:
            session._busy = False
            if not session._queue:
                session._queue = None

    def _drain_queue(self, session: Session) -> bool:
        """Apply queued inputs in order until one starts a cleanup (True) or none is left."""
        # Re-read every time: a step can create the queue (an event it caused while busy).
        while session._queue:
            if self._step(session, session._queue.popleft()):
                return True
        return False

    def _step(self, session: Session, inp: Input) -> bool:
        """Apply one input; True when the session started disconnecting (cleanup is due)."""
        try:
            if session._state is State.REMOVED:
                # Queued behind the work that removed the session: route it
                # afresh (a connect then starts a new session).
                self._route(inp)
                return False
            if not self._apply(session, inp):
                self._ignored(session, inp)
            return session._state is State.DISCONNECTING
        except Exception:
            self._internal_error(session, inp.kind.value)
        return False

    def _apply(self, session: Session, inp: Input) -> bool:
        """Fire the trigger the chart says ``inp`` fires in the session's state, if any."""
        superseded = session._superseded
        if superseded is not None and inp.sid in superseded:
            # An older tab that a takeover replaced: never the session's again, even when
            # the agent's full reconnect announces it anew with the same sid.
            return False
        trigger = self._dispatch[inp.kind].get(session._state)
        if trigger is None or not self._fire(session, trigger, input=inp):
            return False
        if inp.kind is _CONNECT and session._state in self._connected:
            self._adopt(session)  # a connect that bound a connection again (reconnect)
        return True

    def _fire(self, session: Session, trigger: str, **kwargs: Any) -> bool:
        """Fire ``trigger``, then every automatic edge the new state offers, until none applies.

        The session's state must be one ``trigger`` has an edge from (``_apply``'s
        dispatch only finds such triggers; other callers check ``_sources``).
        """
        if not self._events[trigger].trigger(session, **kwargs):
            return False
        settled = False
        while not settled:
            settled = True
            for automatic in self._automatic[session._state]:
                if automatic.trigger(session):
                    settled = False
                    break
        return True

    def _adopt(self, session: Session) -> None:
        """Take over what the newly bound participant already has: tracks, ACTIVE state."""
        participant = session._participant
        if participant is None:
            return
        sid = session._sid  # the participant's: it is the one bound to the session
        key = session._key
        for track_sid in list(participant.track_publications):
            if track_sid not in session._tracks:
                self._apply(session, Input(_PUBLISHED, key, sid=sid, track_sid=track_sid))
        if participant.state == _ACTIVE:
            self._apply(session, Input(_ACTIVATE, key, sid=sid))

    def _log_cleanup_started(self, session: Session) -> None:
        self._observer.cleanup_started(session)  # observability hook
        if self._stdlog.isEnabledFor(logging.INFO):
            self._log_session(
                logging.INFO,
                "cleanup.started",
                "cleanup",
                session,
                tracks=len(session._tracks),
                reason=reason_name(session._disconnect_reason),
            )

    async def _cleanup(self, session: Session) -> None:
        """The cleanup runner's task form: the claim (when set), then :meth:`_run_cleanup`."""
        claim = self._claim_cleanup
        if claim is not None and not await self._claimed(session, claim):
            self._end_cleanup(session)
            return
        rest = self._run_cleanup(session)
        if rest is not None:
            await rest

    async def _claimed(self, session: Session, claim: CleanupClaim) -> bool:
        try:
            return bool(await claim(session))
        except Exception:
            self._internal_error(session, "cleanup_claim")
            return True

    def _run_cleanup(self, session: Session) -> Coroutine[Any, Any, None] | None:
        """Run cleanup callbacks inline while they stay synchronous.

        Returns the rest as a coroutine from the first one that returns an
        awaitable after all (a partial or a callable object wrapping an async
        function); ``None`` once cleanup is done.
        """
        self._log_cleanup_started(session)
        callbacks = list(self._cleanups)
        for index, callback in enumerate(callbacks):
            try:
                result = callback(session)
            except (Exception, asyncio.CancelledError) as exc:
                self._reporter("cleanup", callback, session)(Outcome.FAILED, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._cleanup_rest(session, result, callback, callbacks[index + 1 :])
        self._end_cleanup(session)
        return None

    async def _cleanup_rest(
        self,
        session: Session,
        awaitable: Awaitable[Any],
        callback: CleanupCallback,
        rest: list[CleanupCallback],
    ) -> None:
        await self._bounded_cleanup(session, callback, lambda: awaitable)
        for later in rest:
            await self._bounded_cleanup(session, later, functools.partial(later, session))
        self._end_cleanup(session)

    async def _bounded_cleanup(
        self, session: Session, callback: CleanupCallback, call: Callable[[], Any]
    ) -> None:
        report = self._reporter("cleanup", callback, session)
        try:
            await call_bounded(call, (), self._callback_timeout(), report, self._abandoned)
        except asyncio.CancelledError:
            if self._cancelling_runners:
                raise
            # Not ours: a callback cancelled the task running it. Keep the
            # lifecycle going; the callback is the one that failed.
            _uncancel_current_task()
            report(Outcome.FAILED, asyncio.CancelledError("cancelled the cleanup runner"))

    def _end_cleanup(self, session: Session) -> None:
        self._observer.cleanup_ended(session)  # observability hook
        try:
            if session._state in self._sources["cleanup_done"]:
                self._fire(session, "cleanup_done")
        except Exception:
            self._internal_error(session, "cleanup_done")
        if session._state in self._connected:
            self._adopt_isolated(session)  # a takeover's new connection

    def _adopt_isolated(self, session: Session) -> None:
        """:meth:`_adopt` outside a step: a failure is logged, never raised to the caller."""
        try:
            self._adopt(session)
        except Exception:
            self._internal_error(session, "adopt")

    def _enter_grace(self, ev: EventData) -> None:
        self._arm_grace_timer(ev.model, self._config.grace_period)

    def _arm_grace_timer(self, session: Session, delay: float) -> None:
        """Expire ``session``'s window in ``delay`` seconds; earlier timers become stale."""
        session._grace_epoch += 1
        session._grace_timer = asyncio.get_running_loop().call_later(
            delay, self._on_grace_timer, session, session._grace_epoch
        )

    def _exit_grace(self, ev: EventData) -> None:
        timer, ev.model._grace_timer = ev.model._grace_timer, None
        if timer is not None:
            timer.cancel()

    def _enter_removed(self, ev: EventData) -> None:
        self._forget(ev.model)

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session._key) is session:
            del self._sessions[session._key]
        if self._by_sid.get(session._sid) is session:
            del self._by_sid[session._sid]
        if session._grace_timer is not None:
            session._grace_timer.cancel()
            session._grace_timer = None
        session._participant = None
        session._pending = None
        session._tracks.clear()

    def _on_grace_timer(self, session: Session, epoch: int) -> None:
        session._grace_timer = None
        self._feed(session, Input(InputKind.EXPIRE, session._key, epoch=epoch))

    def _after_state_change(self, ev: EventData) -> None:
        session: Session = ev.model
        dest = session._state
        source = self._state_by_name[ev.transition.source]
        transition = Transition(source, dest, ev.event.name, session._sid, time.time())
        session._history.append(transition)
        self._stats["transitions"] += 1
        if self._check_invariants_on:
            self._check_invariants(session)
        if self._stdlog.isEnabledFor(logging.INFO):  # spares building the fields when off
            self._log_session(
                logging.INFO,
                "session.transition",
                self._trigger_category[transition.trigger],
                session,
                trigger=transition.trigger,
                from_state=transition.source.value,
                to_state=dest.value,
            )
        if self._waiters:
            self._resolve_waiters(session)
        listening = self._listening
        if listening["state_changed"]:
            self._emit("state_changed", session, transition)
        if dest is State.REMOVED:
            if listening["removed"]:
                self._emit("removed", session)
        elif dest is State.RECONNECTED and listening["reconnected"]:
            self._emit("reconnected", session)

    def _check_invariants(self, session: Session) -> None:
        # Only a LifecycleManager is ever a _Runner: the layers exist to split the source.
        manager = cast("LifecycleManager", self)
        for violation in check_session(manager, session, self._chart):
            self._stats["invariant_violations"] += 1
            self._log_session(
                logging.ERROR,
                "invariant.violated",
                "session",
                session,
                invariant=violation.invariant,
                detail=violation.detail,
            )

    def _ignored(self, session: Session, inp: Input) -> None:
        if inp.sid and inp.sid != session._sid:
            counter, why = "ignored_stale", "event for a connection that is not the current one"
        elif session._state in self._duplicate_in[inp.kind]:
            counter, why = (
                "ignored_duplicate",
                f"already handled (session is {session._state.value})",
            )
        else:
            counter, why = "ignored_invalid", f"not applicable in state {session._state.value}"
        self._stats[counter] += 1
        self._log_session(
            logging.DEBUG,
            "event.ignored",
            self._input_category[inp.kind],
            session,
            input=inp.kind.value,
            event_sid=inp.sid or None,
            why=why,
        )


def _uncancel_current_task() -> None:
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)  # Python >= 3.11 counts cancel requests
    if uncancel is not None:
        uncancel()
