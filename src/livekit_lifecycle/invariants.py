"""The lifecycle's invariants, as checks you can run against a live manager.

Each check returns a list of :class:`Violation` (empty when everything
holds); :func:`raise_for` turns a non-empty list into one
:class:`InvariantViolation` that names every broken invariant. The checks only
read state, never change it, and are cheap: :func:`check_session` is O(1)
(plus the two latest transitions), so it can run after every transition.

Which check holds when:

- :func:`check_transition`: for any recorded :class:`~livekit_lifecycle.Transition`.
- :func:`check_session`: at every point where the session is not in the middle
  of a transition, in particular inside a ``state_changed`` listener.
- :func:`check_manager`: every session plus the manager's indexes; same points.
  With ``idle=True`` it also checks what must hold once ``await manager.idle()``
  returned (no queued input, no running task, tracks mirror the SDK).
- :func:`check_closed`: after ``await manager.aclose()`` returned.

:class:`InvariantChecker` subscribes to a manager's ``state_changed`` and runs
:func:`check_session` (optionally :func:`check_manager`) on every transition.

The invariants (ids are stable; :data:`INVARIANTS` describes each):

=====================  ==============================================================
``chart.state``        the session's state is one the chart defines
``chart.edge``         every transition is an edge of the chart
``chart.path``         the history is a connected walk from the chart's initial state
                       that ends in the current state (a restore from a store starts
                       the walk again at the initial state)
``cleanups.bounded``   ``cleanups`` never exceeds ``connections``
``cleanups.exact``     every connection that ended was cleaned exactly once
``grace.timer``        a session in ``grace`` has a live timer; any other has none
``tracks.scope``       ``tracks`` is empty outside ``connecting``/``active``/``disconnecting``
``tracks.connecting``  ``tracks`` is empty in ``connecting`` (a first track activates)
``participant.scope``  a participant reference exactly while a connection is bound (but
                       a connection restored from a store after it ended has none)
``pending.scope``      a takeover's waiting connection only while the old one is cleaned
``index.sessions``     live sessions are stored under their own key
``index.sid``          the sid index maps exactly each live session's sid to it
``removed.forgotten``  after ``removed`` nothing of the session is left in the manager
``idle.settled``       once idle: no queued input, no busy session, no running task
``tracks.mirror``      once idle: a connected session's tracks are its participant's
``closed.empty``       after ``aclose()``: no session, index, task, waiter, handler
=====================  ==============================================================

``tracks.scope`` refines "tracks are empty outside connecting/active": cleanup
callbacks run while the session is ``disconnecting`` and may read
``session.tracks`` and ``session.participant``; both are dropped on
``cleanup_done``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._view import InternalView
from .session import Session, Transition
from .statechart import PARTICIPANT_CHART, State, Statechart

if TYPE_CHECKING:
    from .manager import LifecycleManager

__all__ = [
    "INVARIANTS",
    "InvariantChecker",
    "InvariantViolation",
    "Violation",
    "check_closed",
    "check_manager",
    "check_session",
    "check_transition",
    "raise_for",
]

INVARIANTS: dict[str, str] = {
    "chart.state": "the session's state is one the chart defines",
    "chart.edge": "every transition is an edge of the chart",
    "chart.path": "the history is a connected walk from the initial state to the current one",
    "cleanups.bounded": "cleanups never exceeds the number of connections the session had",
    "cleanups.exact": "every connection that ended was cleaned exactly once",
    "grace.timer": "a session in grace has a live timer; a session in any other state has none",
    "tracks.scope": "tracks is empty outside connecting/active/disconnecting",
    "tracks.connecting": "tracks is empty in connecting (the first track activates)",
    "participant.scope": "the session holds its participant exactly while a connection is bound",
    "pending.scope": "a takeover's waiting connection exists only while the old one is cleaned",
    "index.sessions": "every live session is stored under its own key",
    "index.sid": "the sid index maps exactly each live session's current sid to it",
    "removed.forgotten": "after removed nothing of the session is left in the manager",
    "idle.settled": "once idle, no input is queued, no session busy, no task running",
    "tracks.mirror": "once idle, a connected session's tracks are its participant's publications",
    "closed.empty": "after aclose() no session, index entry, task, waiter or handler is left",
}
"""Invariant id -> what it promises."""


def _group(chart: Statechart, name: str) -> tuple[State, ...]:
    """The chart's state group ``name``; a chart declaring none (a test's variant) uses ours."""
    return chart.group(name) if chart.groups else PARTICIPANT_CHART.group(name)


def _restarts(chart: Statechart) -> frozenset[str]:
    """Triggers a restore fires: a session rebuilt from a store starts its walk again
    at the initial state, after the transitions its record kept."""
    return frozenset(e.trigger for e in chart.edges if e.input == "restored")


def _is_state(chart: Statechart, state: object) -> bool:
    """Whether ``state`` is one of the chart's state objects (not merely equal to one's value)."""
    return any(state is known for known in chart.states)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: its id (a key of :data:`INVARIANTS`), session key, what is wrong."""

    invariant: str
    key: str | None
    detail: str

    def __str__(self) -> str:
        where = f" [{self.key}]" if self.key is not None else ""
        return f"{self.invariant}{where}: {self.detail}"


class InvariantViolation(AssertionError):
    """Raised by :func:`raise_for` and :meth:`InvariantChecker.raise_if_violated`.

    ``violations`` holds every :class:`Violation` found; the message lists them all.
    """

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"{len(self.violations)} lifecycle invariant(s) violated:\n{lines}")


def raise_for(violations: Iterable[Violation]) -> None:
    """Raise :class:`InvariantViolation` if ``violations`` is not empty."""
    found = list(violations)
    if found:
        raise InvariantViolation(found)


def check_transition(
    transition: Transition, chart: Statechart = PARTICIPANT_CHART, key: str | None = None
) -> list[Violation]:
    """``chart.state`` and ``chart.edge`` for one recorded transition."""
    found: list[Violation] = []
    for end in (transition.source, transition.dest):
        if not _is_state(chart, end):
            found.append(Violation("chart.state", key, f"{end!r} is not a state of the chart"))
    if not found and not chart.is_edge(transition.source, transition.dest, transition.trigger):
        found.append(
            Violation(
                "chart.edge",
                key,
                f"{transition.source.value} --{transition.trigger}--> {transition.dest.value}"
                " is not an edge of the chart",
            )
        )
    return found


def check_session(
    manager: LifecycleManager,
    session: Session,
    chart: Statechart = PARTICIPANT_CHART,
    *,
    full_history: bool = False,
) -> list[Violation]:
    """Every per-session invariant, including the manager's indexes for this session.

    Checks the latest transition (every one with ``full_history=True``).
    """
    key = session._key
    state = session._state
    view = InternalView(manager)
    found: list[Violation] = []

    def bad(invariant: str, detail: str) -> None:
        found.append(Violation(invariant, key, detail))

    if not _is_state(chart, state):
        bad("chart.state", f"state {state!r} is not a state of the chart")
        return found

    history = session._history
    checked = history if full_history else history[-1:]
    for transition in checked:
        found.extend(check_transition(transition, chart, key))
    _check_path(session, chart, bad, full_history)

    connections, cleanups = session.connections, session._cleanups
    if cleanups > connections:
        bad("cleanups.bounded", f"cleanups={cleanups} > connections={connections}")
    # The connection bound now (being cleaned, in disconnecting) has not ended yet.
    bound = _group(chart, "bound")
    ended = connections - (1 if state in bound else 0)
    if cleanups != ended:
        bad(
            "cleanups.exact",
            f"in {state.value} with connections={connections}: cleanups={cleanups},"
            f" expected {ended}",
        )

    # A state with delayed edges (grace) has their timers armed; any other has none.
    timers = view.timers(session)
    if chart.delayed_edges(state):
        if not timers or any(timer.cancelled() for timer in timers):
            bad("grace.timer", f"in {state.value} without a live timer")
    elif timers:
        cancelled = [timer.cancelled() for timer in timers]
        bad("grace.timer", f"in {state.value} with a timer (cancelled={cancelled})")

    tracks = session._tracks or set()
    if tracks and state not in _group(chart, "may_hold_tracks"):
        which = "tracks.connecting" if state is State.CONNECTING else "tracks.scope"
        bad(which, f"in {state.value} holding tracks {sorted(tracks)}")

    participant = session._participant
    if state in bound:
        if participant is None:
            # Except a connection restored from a durable store after it had ended:
            # no participant object exists for it, and it is being cleaned.
            if not (state is State.DISCONNECTING and view.durable):
                bad("participant.scope", f"in {state.value} without a participant")
        elif participant.sid != session._sid:
            bad(
                "participant.scope",
                f"holds participant sid {participant.sid}, session sid is {session._sid}",
            )
    elif participant is not None:
        bad("participant.scope", f"in {state.value} still holding participant {participant.sid}")

    pending = view.pending(session)
    if pending is not None and state not in _group(chart, "may_have_pending"):
        bad("pending.scope", f"in {state.value} with a waiting connection {pending.sid}")

    stored = view.sessions.get(key)
    indexed = view.by_sid.get(session._sid)
    if state is State.REMOVED:
        left = [
            name
            for name, present in (
                ("sessions", stored is session),
                ("sid index", indexed is session),
                ("grace timer", bool(timers)),
                ("participant", participant is not None),
                ("pending connection", pending is not None),
                ("tracks", bool(tracks)),
            )
            if present
        ]
        if left:
            bad("removed.forgotten", f"removed but still has: {', '.join(left)}")
    else:
        if stored is not session:
            bad("index.sessions", f"live in {state.value} but not stored under its key")
        if indexed is not session:
            bad("index.sid", f"its sid {session._sid} does not map to it")
    return found


def _check_path(
    session: Session,
    chart: Statechart,
    bad: Callable[[str, str], None],
    full_history: bool,
) -> None:
    history = session._history
    if not history:
        if session._state is not chart.initial:
            bad("chart.path", f"in {session._state.value} with no transition recorded")
        return
    if history[-1].dest is not session._state:
        bad(
            "chart.path",
            f"latest transition ends in {history[-1].dest.value}, state is {session._state.value}",
        )
    recent = history if full_history else history[-2:]
    restarts = _restarts(chart)
    for before, after in itertools.pairwise(recent):
        if before.dest is not after.source and not (
            after.source is chart.initial and after.trigger in restarts
        ):
            bad(
                "chart.path",
                f"{before.trigger} ended in {before.dest.value}"
                f" but {after.trigger} left {after.source.value}",
            )
    if len(history) < history.maxlen and history[0].source is not chart.initial:
        bad("chart.path", f"history starts in {history[0].source.value}, not {chart.initial.value}")


def check_manager(
    manager: LifecycleManager, chart: Statechart = PARTICIPANT_CHART, *, idle: bool = False
) -> list[Violation]:
    """Every session of ``manager`` plus its indexes.

    With ``idle=True``, also what must hold once ``await manager.idle()`` returned.
    """
    found: list[Violation] = []
    view = InternalView(manager)
    for key, session in view.sessions.items():
        if session._key != key:
            found.append(Violation("index.sessions", key, f"holds session of key {session._key!r}"))
        found.extend(check_session(manager, session, chart, full_history=True))
        if idle:
            found.extend(_check_idle_session(view, session, chart))
    for sid, session in view.by_sid.items():
        if view.sessions.get(session._key) is not session:
            found.append(
                Violation("index.sid", session._key, f"sid {sid} maps to a session not stored")
            )
        elif session._sid != sid:
            found.append(
                Violation("index.sid", session._key, f"stale sid {sid} (current is {session._sid})")
            )
    if idle:
        running = [task for task in view.tasks if not task.done()]
        if running:
            found.append(Violation("idle.settled", None, f"{len(running)} task(s) still running"))
    return found


def _check_idle_session(view: InternalView, session: Session, chart: Statechart) -> list[Violation]:
    found: list[Violation] = []
    busy, queued = view.busy(session), view.queued(session)
    if busy or queued:
        found.append(Violation("idle.settled", session._key, f"busy={busy}, queued={queued}"))
    participant = session._participant
    if session._state in _group(chart, "connected") and participant is not None:
        published = set(participant.track_publications)
        tracks = session._tracks or set()
        if tracks != published:
            found.append(
                Violation(
                    "tracks.mirror",
                    session._key,
                    f"tracks {sorted(tracks)} but the participant publishes {sorted(published)}",
                )
            )
    return found


def check_closed(manager: LifecycleManager) -> list[Violation]:
    """What must hold once ``await manager.aclose()`` has returned."""
    view = InternalView(manager)
    left = [
        f"{name}={size}"
        for name, size in (
            ("sessions", len(view.sessions)),
            ("sid index", len(view.by_sid)),
            ("tasks", sum(1 for task in view.tasks if not task.done())),
            ("waiters", view.waiter_count),
            ("room handlers", view.handler_count),
            ("resources", view.resource_count),
        )
        if size
    ]
    found: list[Violation] = []
    if left:
        found.append(Violation("closed.empty", None, f"left after aclose(): {', '.join(left)}"))
    if not view.closed or view.room is not None:
        found.append(
            Violation("closed.empty", None, "not marked closed, or still attached to a room")
        )
    return found


class InvariantChecker:
    """Checks a manager's invariants on every transition, as it happens.

    Registers a synchronous ``state_changed`` listener; each transition runs
    :func:`check_session` for the session that moved (and :func:`check_manager`
    too when ``whole_manager=True``, O(sessions) per transition). Violations
    are collected in :attr:`violations`, never raised from inside the manager
    (a listener's exception would only be logged there).
    """

    def __init__(
        self,
        manager: LifecycleManager,
        chart: Statechart = PARTICIPANT_CHART,
        *,
        whole_manager: bool = False,
    ) -> None:
        self.manager = manager
        self.chart = chart
        self.whole_manager = whole_manager
        self.violations: list[Violation] = []
        self.transitions = 0
        manager.on("state_changed", self._on_transition)

    def _on_transition(self, session: Session, transition: Transition) -> None:
        self.transitions += 1
        if session._history and session._history[-1] is not transition:
            self.violations.append(
                Violation("chart.path", session._key, "notified transition is not the latest")
            )
        self.violations.extend(check_session(self.manager, session, self.chart))
        if self.whole_manager:
            self.violations.extend(check_manager(self.manager, self.chart))

    def check_now(self, *, idle: bool = False) -> list[Violation]:
        """Run :func:`check_manager` now; what it finds is also added to :attr:`violations`."""
        found = check_manager(self.manager, self.chart, idle=idle)
        self.violations.extend(found)
        return found

    def raise_if_violated(self) -> None:
        """Raise :class:`InvariantViolation` listing every violation seen so far."""
        raise_for(self.violations)

    def close(self) -> None:
        """Stop checking (remove the listener)."""
        self.manager.off("state_changed", self._on_transition)
