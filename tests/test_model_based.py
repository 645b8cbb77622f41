"""Model-based tests: paths enumerated from ``PARTICIPANT_CHART`` itself, run against a real Room.

How it works (the approach of XState's graph tools, ``getShortestPaths``):

1. The *model* is the chart plus a small abstract context (is a takeover's
   connection waiting, may the last disconnect open the grace window, is the
   manager closing, is the bound connection active). Each chart guard has an
   abstract evaluator over that context (:data:`GUARDS`).
2. *Stimuli* (:data:`STIMULI`) are what the outside world can do: each names
   the chart trigger it fires, what it changes in the world, and how to do it
   for real (a room event fed through ``RoomDriver``, or a manager call).
3. A breadth-first search over (state, context) applies stimuli, follows the
   chart's automatic edges, and records the shortest stimulus sequence that
   fires each edge. Every edge gets a test; the last step is tried with every
   stimulus that fires the edge from there.
4. Each path runs against a real ``rtc.Room`` and a real manager on a
   virtual-time loop. A recorder on the manager's own ``transitions`` machine
   logs every edge that fires (internal ones too); after each step the fired
   edges must be exactly the model's, and every invariant must hold.

A new edge in the chart is a new test with no edit here. An edge whose
trigger has no stimulus, or whose guard has no evaluator, fails loudly naming
it. ``test_edge_coverage_is_complete`` reports coverage; run with ``-rP`` to
see the table.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from livekit import rtc

from livekit_lifecycle import PARTICIPANT_CHART, LifecycleConfig, LifecycleManager, Session, State
from livekit_lifecycle.invariants import (
    InvariantChecker,
    check_closed,
    check_manager,
    raise_for,
)
from livekit_lifecycle.statechart import Edge, Statechart
from livekit_lifecycle.stores import MemoryStore, SessionRecord, StoreWrite
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.testing.virtual_time import run

CHART = PARTICIPANT_CHART
GRACE = 30.0
USER = "u"
SETTLE_ROUNDS = 50
REASON = rtc.DisconnectReason

# --------------------------------------------------------------------------- the abstract model


@dataclass(frozen=True)
class Context:
    """One session of the chart plus the facts its guards read."""

    state: State
    pending: bool = False
    """A takeover's new connection waits for the old one's cleanup."""
    grace_reason: bool = True
    """The latest disconnect's reason lets the grace window open."""
    closing: bool = False
    """The manager is shutting down."""
    bound_active: bool = False
    """The connection bound to the session is active (or publishes)."""
    waiting_active: bool = False
    """The connection that will be bound next is already active."""
    busy: bool = False
    """The state's activity is running: inputs wait in the session's queue meanwhile."""
    from_store: bool = False
    """The path starts with a session a durable store kept, which a new manager restores."""


Payload = frozenset[str]
"""Event-level guard facts a stimulus carries (``is_current_sid``...)."""

GuardModel = Callable[[Context, Payload], bool]

GUARDS: dict[str, GuardModel] = {
    "is_current_sid": lambda ctx, payload: "is_current_sid" in payload,
    "is_new_sid": lambda ctx, payload: "is_new_sid" in payload,
    "is_current_timer": lambda ctx, payload: "is_current_timer" in payload,
    "has_pending_connection": lambda ctx, payload: ctx.pending,
    "grace_allowed": lambda ctx, payload: GRACE > 0 and ctx.grace_reason and not ctx.closing,
    "participant_is_active": lambda ctx, payload: ctx.bound_active,
    "stored_cleaned": lambda ctx, payload: "stored_cleaned" in payload,
    "connection_present": lambda ctx, payload: "connection_present" in payload,
}
"""How each chart guard evaluates on the abstract context (see the guards' descriptions)."""

EFFECTS: dict[str, Callable[[Context], Context]] = {
    "takeover": lambda ctx: replace(ctx, pending=True),
    "rejoin": lambda ctx: replace(ctx, pending=False, bound_active=ctx.waiting_active),
    "reconnect": lambda ctx: replace(ctx, bound_active=ctx.waiting_active),
}
"""What an edge's effect changes in the abstract context (nothing when not listed)."""

BINDS = frozenset({"rejoin", "reconnect"})
"""Triggers whose effect binds the waiting connection to the session."""


def _unchanged(ctx: Context) -> Context:
    return ctx


class _DurableMemoryStore(MemoryStore):
    """The reference store, kept as if it outlived the process: a manager restores from it."""

    @property
    def durable(self) -> bool:
        return True


# --------------------------------------------------------------------------- the real harness


class Harness:
    """One real room, one real manager, one user whose connections share the key ``u``.

    Every activity of the chart is held until the path's step that ends it: the
    cleanup callback and, for any other activity, its implementation wait on one gate.
    """

    def __init__(
        self, driver: RoomDriver, chart: Statechart = CHART, *, from_store: bool = False
    ) -> None:
        self.driver = driver
        self.chart = chart
        self.store = _DurableMemoryStore() if from_store else None
        config = LifecycleConfig(
            grace_period=GRACE,
            cleanup_timeout=10.0,
            shutdown_timeout=30.0,
            session_key=lambda p: p.attributes.get("user") or p.identity,
        )
        self.manager = LifecycleManager(
            config if self.store is None else replace(config, store=self.store),
            chart=chart,
            activities={a.name: self._activity for a in chart.activities if a.name != "cleanup"},
        )
        self.fired = record_edges(self.manager, chart)
        self.checker = InvariantChecker(self.manager, chart)
        self.gate = asyncio.Event()
        self.gate_open = False
        self.cleaned: list[str] = []
        self.manager.add_cleanup(self._cleanup)
        self.close_task: asyncio.Future[None] | None = None
        self._ids = itertools.count(1)
        self.participants: dict[str, rtc.RemoteParticipant] = {}
        self.current: str | None = None
        self.waiting: str | None = None
        if self.store is None:
            self.manager.attach(driver.room)
            self.current = self.connect_new(active=False)

    async def restart_from_store(self, stored: str) -> None:
        """What a dead process left in the store for the user, restored by this manager.

        ``stored``: ``grace`` (its window was open), ``present`` (connected, and still
        in the room), ``gone`` (connected, and left while no process watched).
        """
        assert self.store is not None
        now = time.time()
        sid = "PA_gone"
        if stored == "present":
            self.current = self.connect_new(active=False)
            sid = self.participant(self.current).sid
        await self.store.write(
            [
                StoreWrite(
                    self.driver.room.name,
                    USER,
                    SessionRecord(
                        room=self.driver.room.name,
                        key=USER,
                        state="grace" if stored == "grace" else "active",
                        identity=f"{USER}-0",
                        sid=sid,
                        user_id=None,
                        data={},
                        connected_at=now - 10,
                        disconnected_at=now - 1 if stored == "grace" else None,
                        grace_deadline=now + GRACE if stored == "grace" else None,
                        cleanups=1 if stored == "grace" else 0,
                        history=(),
                        owner="host:1:dead",
                    ),
                    60.0,
                )
            ]
        )
        self.manager.attach(self.driver.room)

    async def _activity(self, session: Session) -> None:
        if not self.gate_open:
            await self.gate.wait()

    async def _cleanup(self, session: Session) -> None:
        # Held until the path's cleanup_done step, so the path decides what
        # happens while the session is disconnecting.
        self.cleaned.append(session.sid)
        if not self.gate_open:
            await self.gate.wait()

    def connect_new(self, *, active: bool) -> str:
        identity = f"{USER}-{next(self._ids)}"
        participant = self.driver.connect(identity, active=active, attributes={"user": USER})
        self.participants[identity] = participant
        return identity

    def release_cleanup(self) -> None:
        gate, self.gate = self.gate, asyncio.Event()
        gate.set()

    @property
    def me(self) -> str:
        """The identity of the user's current connection."""
        assert self.current is not None, "no connection of the user was seen yet"
        return self.current

    def participant(self, identity: str | None) -> rtc.RemoteParticipant:
        """The participant object of ``identity``'s connection (also after it left)."""
        assert identity is not None, "no connection of the user was seen yet"
        return self.participants[identity]

    def redeliver_unpublish(self) -> None:
        """A ``track_unpublished`` for the current connection, delivered a second time.

        The SDK never reports an unpublish to a participant the manager sees
        as connecting (its first ``track_published`` activates it); the chart
        accepts one anyway, for events redelivered by application code. So
        the SDK produces a real publish/unpublish pair while the manager is
        detached, and ``RoomDriver.redeliver_unpublish`` then emits the
        unpublish again.
        """
        room = self.driver.room
        self.manager.detach()
        track = self.driver.publish_track(self.me)
        publication = self.driver.unpublish_track(self.me, track)
        self.manager.attach(room)
        assert publication is not None
        self.driver.redeliver_unpublish(publication, self.participant(self.current))

    def start_close(self) -> None:
        self.close_task = asyncio.ensure_future(self.manager.aclose())

    async def finish(self) -> None:
        """Let every held cleanup go, shut down, check nothing is left."""
        self.gate_open = True
        self.gate.set()
        if self.manager._close_task is not None and self.close_task is None:
            self.close_task = self.manager._close_task
        if self.close_task is not None:
            await self.close_task
        await self.manager.aclose()
        await settle()
        raise_for(check_closed(self.manager))
        self.checker.raise_if_violated()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert not others, f"tasks left after aclose(): {others}"


def record_edges(manager: LifecycleManager, chart: Statechart) -> list[tuple[Session, Edge]]:
    """Every chart edge the manager's machine executes, internal ones included, in order.

    Hooks an ``after`` callback onto each ``transitions.Transition`` the
    manager built, then freezes the machine again so that it calls them. The
    machine keeps a trigger's transitions from one source in the chart's
    order, which maps each back to its :class:`Edge`.
    """
    fired: list[tuple[Session, Edge]] = []

    def note(edge: Edge, event_data: Any) -> None:
        fired.append((event_data.model, edge))

    for trigger in chart.triggers:
        event = manager._runtime.machine.events[trigger]
        for source in chart.states:
            edges = [e for e in chart.edges if e.trigger == trigger and e.source is source]
            built = event.transitions.get(source.name, [])
            assert len(built) == len(edges), (
                f"machine and chart disagree on {trigger} from {source}"
            )
            for edge, transition in zip(edges, built, strict=True):
                transition.add_callback("after", functools.partial(note, edge))
    # The lean machine compiles its callbacks: recompile with ours.
    manager._runtime.machine.freeze()
    return fired


async def settle() -> None:
    """Let every task that can run, run (no clock time passes)."""
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- stimuli


@dataclass(frozen=True)
class Stimulus:
    """Something the world does, the chart trigger it fires, and how to do it for real."""

    name: str
    trigger: str
    run: Callable[[Harness], Awaitable[None]]
    payload: Payload = frozenset()
    world: Callable[[Context], Context] = _unchanged

    def __repr__(self) -> str:
        return self.name


CURRENT = frozenset({"is_current_sid"})


async def _publish(h: Harness) -> None:
    h.driver.publish_track(h.me)


async def _unpublish(h: Harness) -> None:
    publications = list(h.participant(h.current).track_publications)
    if publications:
        h.driver.unpublish_track(h.me, publications[0])
    else:
        h.redeliver_unpublish()


async def _activate(h: Harness) -> None:
    h.driver.activate(h.me)


def _disconnect(reason: int) -> Callable[[Harness], Awaitable[None]]:
    async def go(h: Harness) -> None:
        h.driver.disconnect(h.me, reason)

    return go


def _new_connection(*, active: bool) -> Callable[[Harness], Awaitable[None]]:
    async def go(h: Harness) -> None:
        h.waiting = h.connect_new(active=active)

    return go


async def _activity_ends(h: Harness) -> None:
    h.release_cleanup()


def _delay_passes(delay: str) -> Callable[[Harness], Awaitable[None]]:
    async def go(h: Harness) -> None:
        # Virtual time: the clock jumps to the timer the chart's delayed edge armed.
        await asyncio.sleep(float(getattr(h.manager.config, delay)))

    return go


def _restored(stored: str) -> Callable[[Harness], Awaitable[None]]:
    async def go(h: Harness) -> None:
        await h.restart_from_store(stored)

    return go


async def _aclose(h: Harness) -> None:
    h.start_close()


async def _room_disconnected(h: Harness) -> None:
    h.driver.room_disconnected(REASON.ROOM_DELETED)


ROOM_STIMULI: tuple[Stimulus, ...] = (
    Stimulus(
        "track_published",
        "publish_track",
        _publish,
        CURRENT,
        lambda c: replace(c, bound_active=True),
    ),
    Stimulus(
        "participant_active",
        "activate",
        _activate,
        CURRENT,
        lambda c: replace(c, bound_active=True),
    ),
    Stimulus("track_unpublished", "unpublish_track", _unpublish, CURRENT),
    Stimulus(
        "participant_disconnected(CLIENT_INITIATED)",
        "disconnect",
        _disconnect(REASON.CLIENT_INITIATED),
        CURRENT,
        lambda c: replace(c, grace_reason=True),
    ),
    Stimulus(
        "participant_disconnected(PARTICIPANT_REMOVED)",
        "disconnect",
        _disconnect(REASON.PARTICIPANT_REMOVED),
        CURRENT,
        lambda c: replace(c, grace_reason=False),
    ),
    Stimulus(
        "participant_connected(same key, new sid, joining)",
        "takeover",
        _new_connection(active=False),
        frozenset({"is_new_sid"}),
        lambda c: replace(c, waiting_active=False),
    ),
    Stimulus(
        "participant_connected(same key, new sid, active)",
        "takeover",
        _new_connection(active=True),
        frozenset({"is_new_sid"}),
        lambda c: replace(c, waiting_active=True),
    ),
    # The SDK reports a join as participant_connected (JOINED) and only then
    # participant_active, and a reconnect in grace is handled at the first: the
    # new connection is never active yet. (A takeover's is read after the old
    # connection's cleanup, by which time it may be.)
    Stimulus(
        "participant_connected(same key, in grace)",
        "reconnect",
        _new_connection(active=False),
        world=lambda c: replace(c, waiting_active=False),
    ),
    Stimulus("manager.aclose()", "shutdown", _aclose, world=lambda c: replace(c, closing=True)),
    Stimulus(
        "room disconnected",
        "shutdown",
        _room_disconnected,
        world=lambda c: replace(c, closing=True),
    ),
)


"""What the room and the application do; time and activities come from the chart."""

STORE_STIMULI: tuple[Stimulus, ...] = (
    Stimulus(
        "restored from a store (its grace window open)",
        "restore",
        _restored("grace"),
        frozenset({"stored_cleaned"}),
    ),
    Stimulus(
        "restored from a store (its connection still in the room)",
        "restore",
        _restored("present"),
        frozenset({"connection_present"}),
    ),
    Stimulus("restored from a store (its connection gone meanwhile)", "restore", _restored("gone")),
)
"""A new manager restores what a dead one left in a durable store: the first step of a
path that starts from the store (only there)."""


def chart_stimuli(chart: Statechart) -> tuple[Stimulus, ...]:
    """The stimuli the chart itself defines: an activity ending, a delayed edge's time passing.

    A new state with an activity or a delayed edge is driven with no edit here.
    """
    stimuli = [
        Stimulus(f"activity {activity.name} ends", activity.done, _activity_ends)
        for activity in chart.activities
    ]
    seen: set[tuple[str, str]] = set()
    for edge in chart.edges:
        if edge.delay is not None and (edge.trigger, edge.delay) not in seen:
            seen.add((edge.trigger, edge.delay))
            stimuli.append(
                Stimulus(
                    f"{edge.delay} passes ({edge.trigger})",
                    edge.trigger,
                    _delay_passes(edge.delay),
                    frozenset({"is_current_timer"}),
                )
            )
    return tuple(stimuli)


def stimuli_for(chart: Statechart) -> tuple[Stimulus, ...]:
    return ROOM_STIMULI + STORE_STIMULI + chart_stimuli(chart)


STIMULI = stimuli_for(CHART)

# --------------------------------------------------------------------------- path planning


@dataclass(frozen=True)
class Step:
    stimulus: Stimulus
    fired: tuple[Edge, ...]
    after: Context


def _first_edge(chart: Statechart, ctx: Context, trigger: str, payload: Payload) -> Edge | None:
    for edge in chart.edges_from(ctx.state):
        if edge.trigger != trigger:
            continue
        if all(_guard(name)(ctx, payload) for name in edge.guards) and not any(
            _guard(name)(ctx, payload) for name in edge.unless
        ):
            return edge
    return None


def _guard(name: str) -> GuardModel:
    try:
        return GUARDS[name]
    except KeyError:
        pytest.fail(
            f"the chart has a guard {name!r} this model cannot evaluate:"
            " add it to GUARDS in tests/test_model_based.py",
            pytrace=False,
        )


def apply(chart: Statechart, ctx: Context, stimulus: Stimulus) -> Step | None:
    """The model's answer: which edges ``stimulus`` fires from ``ctx`` (None: it is ignored).

    While the state's activity runs only its end is planned: anything else would wait
    in the session's queue (paths do not wait on queues).
    """
    if ctx.from_store != (stimulus in STORE_STIMULI):
        return None  # a store's restore starts its path, and only that path
    activity = chart.activity(ctx.state)
    ends = activity is not None and stimulus.trigger == activity.done
    if ctx.busy != ends:
        return None
    world = replace(stimulus.world(ctx), busy=False, from_store=False)
    edge = _first_edge(chart, world, stimulus.trigger, stimulus.payload)
    if edge is None:
        return None
    fired = [edge]
    ctx = _enter(chart, EFFECTS.get(edge.trigger, _unchanged)(world), edge)
    settled = False
    while not settled:
        settled = True
        for trigger in chart.automatic_triggers(ctx.state):
            automatic = _first_edge(chart, ctx, trigger, frozenset())
            if automatic is not None:
                fired.append(automatic)
                ctx = _enter(chart, EFFECTS.get(trigger, _unchanged)(ctx), automatic)
                settled = False
                break
    return Step(stimulus, tuple(fired), ctx)


def _enter(chart: Statechart, ctx: Context, edge: Edge) -> Context:
    """``ctx`` after ``edge``: entering a state with an activity starts it (internal: no entry)."""
    if edge.internal:
        return ctx
    return replace(ctx, state=edge.target, busy=chart.activity(edge.target) is not None)


@dataclass(frozen=True)
class Plan:
    edge: Edge
    steps: tuple[Step, ...]

    def describe(self) -> str:
        return " -> ".join(step.stimulus.name for step in self.steps)


def missing_drivers(chart: Statechart, stimuli: tuple[Stimulus, ...]) -> list[str]:
    """Triggers that only the outside world can fire but no stimulus drives."""
    driven = {s.trigger for s in stimuli}
    automatic = {e.trigger for e in chart.edges if e.automatic}
    return [t for t in chart.triggers if t not in driven and t not in automatic]


def plan_paths(chart: Statechart, stimuli: tuple[Stimulus, ...]) -> dict[Edge, list[Plan]]:
    """Shortest stimulus sequence to every edge (BFS), with every last step that fires it.

    Paths start from a user who just joined; an edge only a restore reaches (a store's
    restore edges) from a session a durable store kept.
    """
    joined = _bfs(chart, stimuli, Context(chart.initial))
    restored = _bfs(chart, stimuli, Context(chart.initial, from_store=True))
    return joined | {edge: plans for edge, plans in restored.items() if edge not in joined}


def _bfs(
    chart: Statechart, stimuli: tuple[Stimulus, ...], start: Context
) -> dict[Edge, list[Plan]]:
    starts = [start]
    plans: dict[Edge, list[Plan]] = {}
    seen = set(starts)
    frontier: deque[tuple[Context, tuple[Step, ...]]] = deque((start, ()) for start in starts)
    while frontier:
        ctx, path = frontier.popleft()
        for stimulus in stimuli:
            step = apply(chart, ctx, stimulus)
            if step is None:
                continue
            for edge in step.fired:
                known = plans.setdefault(edge, [])
                if not known or (
                    len(known[0].steps) == len(path) + 1
                    and known[0].steps[:-1] == path
                    and all(p.steps[-1].stimulus is not stimulus for p in known)
                ):
                    known.append(Plan(edge, (*path, step)))
            if step.after not in seen:
                seen.add(step.after)
                frontier.append((step.after, (*path, step)))
    return plans


def edge_id(edge: Edge) -> str:
    return f"{edge.source.value}-{edge.trigger}-{edge.target.value}"


def _cases(chart: Statechart = CHART) -> Iterator[Any]:
    plans = plan_paths(chart, stimuli_for(chart))
    for index, edge in enumerate(chart.edges):
        options: list[Plan | None] = [*plans.get(edge, [])] or [None]
        for plan in options:
            last = "unreachable" if plan is None else plan.steps[-1].stimulus.name
            yield pytest.param(index, plan, id=f"{edge_id(edge)}[{last}]")


# --------------------------------------------------------------------------- running a path


async def execute(plan: Plan, chart: Statechart = CHART) -> list[Edge]:
    """Run ``plan`` against a real room; check every step fires exactly the model's edges."""
    bound = chart.group("bound")
    from_store = plan.steps[0].stimulus in STORE_STIMULI
    async with RoomDriver("model-room") as driver:
        h = Harness(driver, chart, from_store=from_store)
        session = h.manager.get(USER)
        if from_store:
            assert session is None
        else:
            assert session is not None and session.state is chart.initial
        fired_all: list[Edge] = []
        for number, step in enumerate(plan.steps, 1):
            before = len(h.fired)
            await step.stimulus.run(h)
            await settle()
            if session is None:
                session = h.manager.get(USER)
                assert session is not None, "nothing restored"
            fired = h.fired[before:]
            where = f"step {number} ({step.stimulus.name}) of {plan.describe()}"
            assert [edge_id(e) for _, e in fired] == [edge_id(e) for e in step.fired], where
            assert all(s is session for s, _ in fired), (
                f"{where}: an edge fired for another session"
            )
            fired_all += [e for _, e in fired]
            if any(e.trigger in BINDS for e in step.fired):
                assert h.waiting is not None
                h.current, h.waiting = h.waiting, None
            expected = None if step.after.state in chart.final else step.after.state
            assert h.manager.state_of(USER) is expected, where
            assert session.state is step.after.state, where
            if session.state in bound and session.participant is not None:
                assert session.sid == h.participant(h.current).sid, f"{where}: bound to wrong sid"
            raise_for(check_manager(h.manager, chart))
        stats = h.manager.stats
        assert stats["internal_errors"] == stats["callback_errors"] == 0
        assert stats["rejected_input"] == stats["callback_timeouts"] == 0
        await h.finish()
        assert sorted(h.cleaned) == sorted(set(h.cleaned)), "a connection was cleaned twice"
        return fired_all


# --------------------------------------------------------------------------- tests


def test_every_trigger_has_a_driver_and_every_guard_a_model() -> None:
    missing = missing_drivers(CHART, STIMULI)
    assert not missing, (
        f"chart triggers with no driver: {missing}. Add a Stimulus that fires each"
        " (a RoomDriver event or a manager call) to STIMULI in tests/test_model_based.py"
    )
    unknown = sorted({g.name for g in CHART.guards} - set(GUARDS))
    assert not unknown, f"chart guards with no model: {unknown}; add them to GUARDS"


def test_a_new_trigger_without_a_driver_is_named() -> None:
    chart = Statechart(
        name="extended",
        states=CHART.states,
        initial=CHART.initial,
        final=CHART.final,
        guards=CHART.guards,
        edges=(*CHART.edges, Edge("mute", State.ACTIVE, None, "a new input")),
    )
    assert missing_drivers(chart, STIMULI) == ["mute"]
    assert chart.edges[-1] not in plan_paths(chart, STIMULI)


@pytest.mark.parametrize(("index", "plan"), list(_cases()))
def test_shortest_path_to_edge(index: int, plan: Plan | None) -> None:
    edge = CHART.edges[index]
    if plan is None:
        missing = missing_drivers(CHART, STIMULI)
        pytest.fail(
            f"no stimulus sequence reaches {edge.source.value} --{edge.trigger}-->"
            f" {edge.target.value}"
            + (f"; triggers without a driver: {missing}" if missing else "")
            + ". Add a Stimulus (and a GUARDS/EFFECTS entry if it needs one).",
            pytrace=False,
        )
    fired = run(lambda: execute(plan))
    assert fired[-len(plan.steps[-1].fired) :] == list(plan.steps[-1].fired)
    assert edge in fired


def test_edge_coverage_is_complete() -> None:
    plans = plan_paths(CHART, STIMULI)
    covered: set[Edge] = set()
    used: set[str] = set()
    rows = []
    for edge in CHART.edges:
        for plan in plans.get(edge, []):
            covered.update(run(lambda plan=plan: execute(plan)))  # type: ignore[misc]
            used.add(plan.steps[-1].stimulus.name)
            used.update(step.stimulus.name for step in plan.steps)
        first = plans.get(edge)
        rows.append(
            f"  {edge_id(edge):42} {'yes' if edge in covered else 'NO ':3}"
            f"  {first[0].describe() if first else '-'}"
        )
    percent = 100 * len(covered & set(CHART.edges)) / len(CHART.edges)
    print("edge coverage of PARTICIPANT_CHART by model-based paths:")
    print("\n".join(rows))
    print(f"  {len(covered)}/{len(CHART.edges)} edges = {percent:.0f}%")
    assert percent == 100, "\n".join(rows)
    unused = [s.name for s in STIMULI if s.name not in used]
    assert not unused, f"drivers no path uses (dead or mis-modelled): {unused}"
