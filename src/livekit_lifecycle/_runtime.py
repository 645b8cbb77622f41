"""The session runtime: runs every session of one manager through a statechart.

:class:`SessionRuntime` holds the sessions and their indexes and interprets
the chart it is given; it names no state and no trigger of its own:

- **inputs**: :meth:`SessionRuntime.feed` applies an :class:`~._events.Input`
  at once when the session is idle, or queues it behind the session's running
  work; the chart's input table says which trigger it fires in the session's
  state, and the chart's automatic edges follow.
- **time**: entering a state with a delayed edge (``Edge.delay``, a config
  field) arms a timer per such edge; leaving the state cancels them. A timer
  that fires is one more input (``Edge.input``) through the same queue,
  carrying the timer's epoch.
- **activities**: entering a state with an :class:`~.statechart.Activity`
  starts its implementation (the manager provides one per activity name, e.g.
  the cleanup callbacks) on the loop's next turn, in one batch for every
  session whose activity became due meanwhile; an implementation returns
  ``None`` when it finished inline, a coroutine for the rest, which runs
  as a task, or :data:`PENDING`: it goes on by itself and calls
  :meth:`SessionRuntime.resume` later (the cleanup's claims: one task for a
  whole batch instead of one per session). When it ends the activity's
  ``done`` trigger fires, then the inputs queued meanwhile are applied in
  order. Nothing cancels an activity but a shutdown past its deadline.

It talks to the rest of the manager through narrow callbacks, each documented
where it is declared: :class:`SessionEvents` (notifications),
:class:`SessionStoreSeam` (a durable store: write-behind, session data,
restore), ``on_bound`` (a new connection was bound: the intake catches up
with it) and ``route`` (an input for a session that is gone).
Its bookkeeping for a session (queue, timers, a takeover's waiting
connection) lives in a private :class:`~._bookkeeping.Bookkeeping` record, made only when
needed; the :class:`~.session.Session` is the user's view.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from livekit import rtc

from . import _actions
from ._bookkeeping import Bookkeeping, record
from ._callbacks import Supervisor
from ._events import Input
from ._log import ManagerLog
from ._machine import EventData, build_machine
from .config import LifecycleConfig
from .session import Session, Transition, _History
from .statechart import Edge, State, Statechart

if TYPE_CHECKING:
    from .stores import Claim

__all__ = [
    "PENDING",
    "ActivityRun",
    "Pending",
    "SessionEvents",
    "SessionRuntime",
    "SessionStoreSeam",
]


class Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = Pending()
"""What an activity's implementation returns when it goes on by itself: it calls
:meth:`SessionRuntime.resume` for that session exactly once, later, in the context
it ran in (a shutdown past its deadline may cancel it first: the session is abandoned)."""

ActivityRun = Callable[[Session], "Coroutine[Any, Any, None] | Pending | None"]
"""An activity's implementation: runs for ``session``; ``None`` when it finished inline,
a coroutine that finishes it, or :data:`PENDING`. It must not raise (it isolates user
code itself)."""

_append = list.append
_Batch = tuple[list[tuple[Session, contextvars.Context]], "asyncio.Future[None]"]


class SessionEvents(Protocol):
    """What the runtime tells the application side (the manager's notifier)."""

    def created(self, session: Session) -> None:
        """A session was made (or restored from a store)."""

    def changed(self, session: Session, transition: Transition) -> None:
        """``session`` changed state; ``transition`` is already in its history."""


class SessionStoreSeam(Protocol):
    """What a durable store's side (``_persistence``) gives the runtime."""

    def written(self, session: Session) -> None:
        """``session`` changed state: write it behind the event path."""

    def data(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        """The container for session ``key``'s ``data`` (one whose changes are written)."""


class SessionRuntime:
    """Sessions, their queues, timers and activities, driven by one chart (see the module doc)."""

    def __init__(
        self,
        chart: Statechart,
        config: LifecycleConfig,
        *,
        log: ManagerLog,
        supervisor: Supervisor,
        events: SessionEvents,
        activities: Mapping[str, ActivityRun],
        store: SessionStoreSeam | None = None,
    ) -> None:
        self.chart = chart
        self.config = config
        self.log = log
        self._enabled = log.stdlog.isEnabledFor
        self.stats = log.stats
        self.supervisor = supervisor
        self._events_out = events
        self._route: Callable[[Input], None] = _unwired
        self._on_bound: Callable[[Session], None] = _unwired
        self._store = store
        self.sessions: dict[str, Session] = {}
        self.by_sid: dict[str, Session] = {}
        self.closing = False
        """Set by the façade when shutdown starts (a guard reads it)."""
        self.connected = chart.group("connected") if chart.groups else ()
        self._busy: set[Session] = set()
        self._batch: _Batch | None = None
        self._delay_override: dict[Session, float] = {}
        """Restored sessions -> the seconds their next timers get (what was left of them)."""
        activities_by_state: dict[Any, tuple[str, ActivityRun]] = {}
        for activity in chart.activities:
            if activity.name not in activities:
                raise ValueError(f"no implementation for activity {activity.name!r}")
            activities_by_state[activity.state] = (activity.done, activities[activity.name])
        self._activity = activities_by_state
        self._activity_states = tuple(activities_by_state)
        self._entered = False
        """Set when a step enters a state with an activity (an internal edge does not)."""
        # Timers: the delayed edges of each state, and the input each one's expiry is.
        delayed: dict[Any, tuple[tuple[Edge, str], ...]] = {}
        timer_inputs: dict[str, dict[Any, str]] = {}
        for state in chart.states:
            edges = chart.delayed_edges(state)
            if edges:
                delayed[state] = tuple((e, e.input or f"after:{e.trigger}") for e in edges)
                for edge, name in delayed[state]:
                    timer_inputs.setdefault(name, {})[edge.source] = edge.trigger
        self._delayed = delayed
        self.machine = build_machine(
            chart,
            guards=_actions.guards(self),
            effects={
                trigger: effect
                for trigger, effect in _actions.effects(self).items()
                if trigger in chart.triggers
            },
            on_enter={
                state: [
                    *([self._arm_timers] if state in delayed else []),
                    *([self._enter_activity] if state in activities_by_state else []),
                    *([self._enter_final] if state in chart.final else []),
                ]
                for state in chart.states
            },
            on_exit={state: [self._cancel_timers] for state in delayed},
            after_state_change=self._after_state_change,
        )
        self._events = self.machine.events
        # What each input means comes from the chart (see statechart.ChartInput).
        dispatch: dict[str, dict[Any, str]] = dict(chart.input_triggers())
        for name, table in timer_inputs.items():
            dispatch.setdefault(name, {}).update(table)
        self._dispatch = dispatch
        self._input_category = {i.name: i.category for i in chart.inputs}
        self._duplicate_in = {i.name: i.duplicate_in for i in chart.inputs}
        self._trigger_category = {trigger: chart.category(trigger) for trigger in chart.triggers}
        self._state_by_name: dict[str, State] = {
            s.name: cast(State, s.value) for s in self.machine.states.values()
        }
        self._final = tuple(chart.final)
        self._automatic = {
            state: tuple(self._events[t] for t in chart.automatic_triggers(state))
            for state in chart.states
        }
        self._check: Callable[[Session], None] | None = None

    # ------------------------------------------------------------------ wiring

    def wire(self, *, route: Callable[[Input], None], on_bound: Callable[[Session], None]) -> None:
        """The room side's callbacks (the intake is built after the runtime it feeds).

        ``route(input)``: an input for a session that is gone, addressed afresh by key
        and sid (a connect then starts a new session). ``on_bound(session)``: a new
        connection was bound to ``session`` (created, reconnected, rejoined): the room
        side catches up with what it already has, inside the same step.
        """
        self._route = route
        self._on_bound = on_bound

    def add_transition_hook(self, hook: Callable[[Session], None]) -> None:
        """Call ``hook(session)`` after every change of state, once it is recorded.

        Installed into the machine's ``on_enter`` lists: no check per transition
        while there is none. Internal edges do not change state and do not call it.
        """

        def after(ev: EventData) -> None:
            hook(ev.model)

        for state in self.chart.states:
            self.machine.get_state(state).on_enter.append(after)
        self.machine.freeze()

    def check_with(self, check: Callable[[Session], None] | None) -> None:
        """Run ``check(session)`` after every change of state (``check_invariants``)."""
        self._check = check

    # ------------------------------------------------------------------ sessions

    def create(self, key: str, participant: rtc.RemoteParticipant) -> Session:
        """A new session for ``participant`` under ``key``, in the chart's initial state."""
        session = Session(key, participant, self.config.history_limit, time.time())
        store = self._store
        if store is not None:
            session._data = store.data(key, {})
        self._register(session)
        if self._enabled(logging.INFO):
            self.log.session(logging.INFO, "session.created", "connect", session)
        # Busy meanwhile, so events a `created` listener causes wait their turn.
        busy = self._busy
        busy.add(session)
        try:
            self._events_out.created(session)
            self._bound(session)
        finally:
            busy.discard(session)
        rec = session._record
        if rec is not None and rec.queue:
            self.feed(session, rec.queue.popleft())
        return session

    def _register(self, session: Session) -> None:
        self.sessions[session._key] = session
        self.by_sid[session._sid] = session

    def _bound(self, session: Session) -> None:
        """Tell the intake a connection was bound; a failure is logged, never raised."""
        try:
            self._on_bound(session)
        except Exception:
            self.log.internal_error(session, "adopt")

    def set_user_id(self, session: Session, user_id: str | None) -> None:
        session._user_id = user_id
        if self._store is not None:
            self._store.written(session)

    def set_cleanup_claim(self, session: Session, claim: Claim | None) -> None:
        """The store's claim on ``session``'s current cleanup (``Session.cleanup_claim``);
        ``None`` while a run has not won one. The cleanup activity's ``record``."""
        session._claim = claim

    def merge_stored(self, session: Session, user_id: str | None, data: Mapping[str, Any]) -> None:
        """A live session takes a stored ``user_id`` when it has none, and the stored
        ``data`` keys it has not set (a restore that answered late: ``_persistence``)."""
        if session._user_id is None:
            session._user_id = user_id
        current = session.data
        current.update({k: v for k, v in data.items() if k not in current})

    def forget(self, session: Session) -> None:
        """Drop ``session`` from the indexes and let go of what it holds (removed, abandoned)."""
        if self.sessions.get(session._key) is session:
            del self.sessions[session._key]
        if self.by_sid.get(session._sid) is session:
            del self.by_sid[session._sid]
        rec = session._record
        if rec is not None:  # its queue stays: what waited behind the removal is routed afresh
            for timer in rec.timers:
                timer.cancel()
            rec.timers = ()
            rec.pending = None
        session._participant = None
        session._tracks = None
        self._delay_override.pop(session, None)

    def abandon(self, session: Session) -> None:
        """Forget a session whose work was cancelled (a shutdown past its deadline)."""
        self.forget(session)
        self._busy.discard(session)
        session._record = None

    def busy(self, session: Session) -> bool:
        return session in self._busy

    def queued(self, session: Session) -> int:
        rec = session._record
        return 0 if rec is None or rec.queue is None else len(rec.queue)

    # ------------------------------------------------------------------ restore

    def restore(
        self,
        key: str,
        *,
        identity: str,
        sid: str,
        fields: Mapping[str, Any],
        history: list[Transition],
        data: dict[str, Any],
        delay: float | None = None,
    ) -> Session:
        """A session rebuilt from a store's record, registered, in the chart's initial state.

        Like a new session, with what the store kept: ``fields`` are the stored
        counters and times (``user_id``, ``reconnects``, ``cleanups``, ``connected_at``,
        ``disconnected_at``), ``history`` its stored transitions. Nothing is announced
        yet: :meth:`enter_restored` does it and feeds the chart's restore input, whose
        edges take the session where the store left it (guards, history, notifications
        see it). ``delay``: the seconds left of the timers the session's next delayed
        edges arm (a grace window that was already running), instead of the configured ones.
        """
        session = Session.__new__(Session)
        session._key = key
        session._identity = key if identity == key else identity
        session._sid = sid
        session._participant = None
        session._user_id = fields.get("user_id")
        session._state = self.chart.initial
        session._tracks = None
        session._connected_at = fields["connected_at"]
        session._disconnected_at = fields.get("disconnected_at")
        session._disconnect_reason = None
        session._reconnects = fields.get("reconnects", 0)
        session._cleanups = fields.get("cleanups", 0)
        session._history = _History(self.config.history_limit)
        for transition in history:
            session._history.append(transition)
        session._claim = None
        session._record = None
        session._data = self._store.data(key, data) if self._store is not None else data
        self._register(session)
        if delay is not None:
            self._delay_override[session] = delay
        return session

    def enter_restored(self, session: Session, inp: Input) -> None:
        """Announce a restored session (``created``), then feed it the restore input ``inp``."""
        self._events_out.created(session)
        self.feed(session, inp)

    # ------------------------------------------------------------------ inputs

    def feed(self, session: Session, inp: Input) -> None:
        """Process ``inp`` now if the session is idle, else queue it behind the running work.

        Synchronous steps run inline, so a state change is visible as soon
        as the room event has been emitted. An activity runs on the loop's next
        turn; whatever queues up meanwhile is applied after it, in order.
        """
        busy = self._busy
        if session in busy:
            rec = record(session)
            if rec.queue is None:
                rec.queue = deque()
            rec.queue.append(inp)
            return
        busy.add(session)
        due = self._step(session, inp)
        after = session._record
        if due or (after is not None and after.queue):
            self._continue(session, due)
        else:  # the common case, without _continue's call
            busy.discard(session)

    def _continue(self, session: Session, due: bool) -> None:
        """Drain the session's queue synchronously up to the next activity, then schedule it."""
        if not due and not self._drain_queue(session):
            self._idle(session)
            return
        self._schedule(session)

    def _idle(self, session: Session) -> None:
        self._busy.discard(session)
        rec = session._record
        if rec is not None and not rec.queue:
            rec.queue = None

    def _drain_queue(self, session: Session) -> bool:
        """Apply queued inputs in order until one starts an activity (True) or none is left."""
        rec: Bookkeeping | None = session._record
        # Re-read every time: a step can create the queue (an event it caused while busy).
        while rec is not None and rec.queue:
            if self._step(session, rec.queue.popleft()):
                return True
            rec = session._record
        return False

    def _step(self, session: Session, inp: Input) -> bool:
        """Apply one input; True when the session entered a state with an activity."""
        try:
            if session._state in self._final:
                # Queued behind the work that ended the session: route it afresh
                # (a connect then starts a new session).
                self._route(inp)
                return False
            self._entered = False
            if not self.apply(session, inp):
                self._ignored(session, inp)
            return self._entered
        except Exception:
            self.log.internal_error(session, str(inp.kind))
        return False

    def apply(self, session: Session, inp: Input) -> bool:
        """Fire the trigger the chart says ``inp`` fires in the session's state, if any."""
        rec = session._record
        if rec is not None and rec.superseded is not None and inp.sid in rec.superseded:
            # An older tab that a takeover replaced: never the session's again, even when
            # the agent's full reconnect announces it anew with the same sid.
            return False
        trigger = self._dispatch[inp.kind].get(session._state)
        return trigger is not None and self._fire(session, trigger, input=inp)

    def state(self, value: State | str) -> State:
        """The chart's state ``value`` (a member, or its value).

        Raises:
            ValueError: for a state the chart does not have.
        """
        for state in self.chart.states:
            if state is value or state.value == value:
                return state
        raise ValueError(f"{value!r} is not a state of the {self.chart.name!r} chart")

    def input_category(self, kind: str) -> str:
        """The log category of input ``kind`` (``session`` for a timer's)."""
        return self._input_category.get(kind, "session")

    def applies(self, kind: str, state: State) -> bool:
        """Whether an input of ``kind`` fires a trigger in ``state`` (guards aside)."""
        return state in self._dispatch[kind]

    def _fire(self, session: Session, trigger: str, **kwargs: Any) -> bool:
        """Fire ``trigger``, then every automatic edge the new state offers, until none applies.

        When that binds a new connection to the session, ``on_bound`` is told.
        """
        participant = session._participant
        if not self._events[trigger].trigger(session, **kwargs):
            return False
        settled = False
        while not settled:
            settled = True
            for automatic in self._automatic[session._state]:
                if automatic.trigger(session):
                    settled = False
                    break
        bound = session._participant
        if bound is not participant and bound is not None and session._state in self.connected:
            self._on_bound(session)
        return True

    # ------------------------------------------------------------------ activities

    def _schedule(self, session: Session) -> None:
        """Start the session's activity on the loop's next turn (the session stays busy).

        One plain loop callback runs every activity that became due meanwhile,
        which costs a fraction of a task each; its future lets ``idle()`` and the
        shutdown wait for it like for any task. Each activity runs in the context
        (``contextvars``: a tracing span...) of the step that made it due, as a
        task created there would.
        """
        batch = self._batch
        if batch is None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            self.supervisor.track(done)
            batch = self._batch = ([], done)
            loop.call_soon(self._run_batch, batch)
        batch[0].append((session, contextvars.copy_context()))

    def _run_batch(self, batch: _Batch) -> None:
        sessions, done = batch
        # Activities that become due from here on (a queued takeover's) go to the next turn.
        self._batch = None
        if done.done():  # cancelled by a shutdown past its deadline
            for session, _ in sessions:
                self._busy.discard(session)
            return
        ran = 0
        try:
            for session, context in sessions:
                ran += 1
                context.run(self._start, session)
        finally:
            done.set_result(None)
            # Only a BaseException from a callback (KeyboardInterrupt...) gets here
            # early: the sessions after it still get their activity, next turn.
            for session, context in sessions[ran:]:
                context.run(self._schedule, session)

    def _start(self, session: Session) -> None:
        try:
            entry = self._activity.get(session._state)
            if entry is None:  # left the state meanwhile (cannot happen while busy)
                self._continue(session, False)
                return
            done, run = entry
            rest = run(session)
            if rest is not PENDING:
                self._went_on(session, done, cast("Coroutine[Any, Any, None] | None", rest))
        except Exception:
            self._busy.discard(session)
            self.log.internal_error(session, "activity")

    def resume(self, session: Session, rest: Coroutine[Any, Any, None] | None) -> None:
        """An activity that returned :data:`PENDING` went on: ``rest`` as ``run`` would
        have returned it (``None``: it finished)."""
        try:
            entry = self._activity.get(session._state)
            if entry is None:  # left the state meanwhile (cannot happen while busy)
                if rest is not None:
                    rest.close()
                self._continue(session, False)
                return
            self._went_on(session, entry[0], rest)
        except Exception:
            self._busy.discard(session)
            self.log.internal_error(session, "activity")

    def _went_on(self, session: Session, done: str, rest: Coroutine[Any, Any, None] | None) -> None:
        if rest is None:
            self._end(session, done)
        else:
            self.supervisor.track(
                asyncio.get_running_loop().create_task(
                    self._finish(session, done, rest),
                    name=f"livekit-lifecycle:{session._key}",
                )
            )

    async def _finish(self, session: Session, done: str, rest: Coroutine[Any, Any, None]) -> None:
        ended = False
        try:
            await rest
            ended = True
        finally:
            if ended:
                self._end(session, done)
            else:  # cancelled by a shutdown past its deadline
                self._busy.discard(session)

    def _end(self, session: Session, done: str) -> None:
        """The activity finished: fire ``done``, then apply what queued up meanwhile."""
        self._entered = False
        try:
            if session._state in self._activity:
                self._fire(session, done)
        except Exception:
            self.log.internal_error(session, done)
        self._continue(session, self._entered)  # `done` may lead into another activity

    # ------------------------------------------------------------------ timers

    def _arm_timers(self, ev: EventData) -> None:
        override = self._delay_override
        self._arm(ev.model, override.pop(ev.model, None) if override else None)

    def _arm(self, session: Session, delay: float | None) -> None:
        """Arm the timers of the delayed edges out of the session's state.

        Each fires its edge's input with the current epoch: an expiry that was
        queued before the state was left and entered again is stale.
        """
        rec = session._record
        if rec is None:
            rec = record(session)
        epoch = rec.epoch = rec.epoch + 1
        call_later = asyncio.get_running_loop().call_later
        config = self.config
        timers = []
        for edge, kind in self._delayed[session._state]:
            seconds = float(getattr(config, edge.delay or "")) if delay is None else delay
            timers.append(call_later(seconds, self._expired, session, kind, epoch))
        rec.timers = tuple(timers)

    def _cancel_timers(self, ev: EventData) -> None:
        rec = ev.model._record
        if rec is not None:
            timers, rec.timers = rec.timers, ()
            for timer in timers:
                timer.cancel()

    def _expired(self, session: Session, kind: str, epoch: int) -> None:
        rec = session._record
        if rec is not None and rec.epoch == epoch:
            rec.timers = ()  # fired: the state's timers are spent
        self.feed(session, Input(kind, session._key, epoch=epoch))

    def timer_deadline(self, session: Session) -> float | None:
        """Wall-clock time the session's first armed timer fires, if any."""
        rec = session._record
        if rec is None or not rec.timers:
            return None
        when = min(t.when() for t in rec.timers)
        return time.time() + (when - asyncio.get_running_loop().time())

    # ------------------------------------------------------------------ recording

    def _enter_activity(self, ev: EventData) -> None:
        self._entered = True

    def _enter_final(self, ev: EventData) -> None:
        self.forget(ev.model)

    def _after_state_change(self, ev: EventData) -> None:
        session: Session = ev.model
        dest = session._state
        source = self._state_by_name[ev.transition.source]
        transition = Transition(source, dest, ev.event.name, session._sid, time.time())
        history = session._history
        _append(history, transition)  # _History.append, without its frame
        if len(history) > history.maxlen:
            del history[0]
        self.stats["transitions"] += 1
        if self._check is not None:
            self._check(session)
        if self._enabled(logging.INFO):  # spares building the fields when off
            self.log.session(
                logging.INFO,
                "session.transition",
                self._trigger_category[transition.trigger],
                session,
                trigger=transition.trigger,
                from_state=transition.source.value,
                to_state=dest.value,
            )
        self._events_out.changed(session, transition)

    def _ignored(self, session: Session, inp: Input) -> None:
        kind = inp.kind
        if inp.sid and inp.sid != session._sid:
            counter, why = "ignored_stale", "event for a connection that is not the current one"
        elif session._state in self._duplicate_in.get(kind, ()):
            counter, why = (
                "ignored_duplicate",
                f"already handled (session is {session._state.value})",
            )
        else:
            counter, why = "ignored_invalid", f"not applicable in state {session._state.value}"
        self.stats[counter] += 1
        self.log.session(
            logging.DEBUG,
            "event.ignored",
            self._input_category.get(kind, "session"),
            session,
            input=str(kind),
            event_sid=inp.sid or None,
            why=why,
        )


def _unwired(_: object) -> None:
    raise RuntimeError("SessionRuntime.wire() was not called")
