"""The participant statechart, defined once, as data.

Everything else derives from :data:`PARTICIPANT_CHART`: the runtime machine
(:mod:`livekit_lifecycle._machine`), the rendered diagrams, the docs and the
model-based tests. Adding an :class:`Edge` here changes all of them.

Reading an edge: ``Edge("disconnect", ACTIVE, DISCONNECTING, guards=("is_current_sid",))``
means "in ``active``, the ``disconnect`` trigger moves to ``disconnecting`` when
the event's sid is the session's current sid". Several edges may share a
trigger; they are tried in the order written here and the first whose guards
pass is taken. An edge with ``dest=None`` is internal: it runs its effect
without changing state. An edge with ``automatic=True`` has no outside cause:
the manager fires it as soon as its source state is entered (XState's
``always``). An edge with ``delay`` names the :class:`~livekit_lifecycle.LifecycleConfig`
field that times it (XState's ``after``). An edge with ``input`` names the
:class:`ChartInput` (a room event, the grace timer, shutdown) that fires it.

The chart also says what the rest of the library needs to know about its
states and inputs, so that nothing else repeats it: named state groups
(:class:`StateGroup`: which states are connected, hold a participant, may
hold tracks...), each input's log category and duplicate rule, each
trigger's log category, and what each state means. The runtime's input
dispatch and ignored-input accounting, the invariants, the compat layer and
the tables in ``docs/concepts.md`` are derived from them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BOUND",
    "CLEANED",
    "CONNECTED",
    "MAY_HAVE_PENDING",
    "MAY_HOLD_TRACKS",
    "PARTICIPANT_CHART",
    "Activity",
    "ChartInput",
    "Edge",
    "Guard",
    "State",
    "StateGroup",
    "Statechart",
]


class State(str, enum.Enum):
    """Where one participant's session is in its lifecycle."""

    CONNECTING = "connecting"
    """Joined the room; not yet active (no media flowing)."""
    ACTIVE = "active"
    """Active in the room (``participant_active`` or a published track)."""
    DISCONNECTING = "disconnecting"
    """The connection ended; cleanup callbacks are running."""
    CLEANED = "cleaned"
    """Cleanup finished exactly once for the connection that ended."""
    GRACE = "grace"
    """Waiting ``grace_period`` seconds for the same user to come back."""
    RECONNECTED = "reconnected"
    """The user came back; the session is re-bound to the new connection."""
    REMOVED = "removed"
    """Final: the session is forgotten. The same key later starts afresh."""

    def __str__(self) -> str:
        return self.value


# The participant chart's state groups. Tuples, not sets: the runtime asks
# "in CONNECTED?" per event, and ``in`` on a short tuple compares identities first.
CONNECTED: tuple[State, ...] = (State.CONNECTING, State.ACTIVE)
"""A live connection: a disconnect or a shutdown starts its cleanup."""
BOUND: tuple[State, ...] = (State.CONNECTING, State.ACTIVE, State.DISCONNECTING, State.RECONNECTED)
"""A connection is bound to the session: its participant is held."""
MAY_HOLD_TRACKS: tuple[State, ...] = (State.ACTIVE, State.DISCONNECTING)
"""The session may remember track sids (a first track activates; cleanup drops them)."""
MAY_HAVE_PENDING: tuple[State, ...] = (State.DISCONNECTING, State.CLEANED)
"""A takeover's new connection may be waiting for the old one's cleanup."""
CLEANED: tuple[State, ...] = (State.CLEANED, State.GRACE)
"""Cleanup has run for the connection that ended, and no new one is bound yet."""


@dataclass(frozen=True, slots=True)
class StateGroup:
    """A named set of states the rest of the library asks about (``connected``, ``bound``...)."""

    name: str
    states: tuple[State, ...]
    description: str


@dataclass(frozen=True, slots=True)
class ChartInput:
    """An outside cause of triggers: a room event, the grace timer, or shutdown.

    ``name`` is what logs show as ``input``. An input the session cannot
    apply is counted and logged as ignored: *stale* when it names another
    connection's sid, a *duplicate* in the ``duplicate_in`` states (it was
    already handled), *invalid* otherwise. ``category`` is the ``category``
    of those log lines.
    """

    name: str
    category: str
    description: str
    duplicate_in: tuple[State, ...] = ()


@dataclass(frozen=True, slots=True)
class Activity:
    """Work the runtime runs while a session is in ``state`` (``invoke`` in statechart libraries).

    The runtime starts it when the session enters ``state`` (after the change is
    recorded and notified), holds the session's later inputs meanwhile, and fires
    ``done`` when it has finished: ``done`` must be a trigger with an edge out of
    ``state``. ``name`` selects the implementation the manager provides (for
    :data:`PARTICIPANT_CHART`, ``cleanup``: the cleanup callbacks).
    """

    name: str
    state: State
    done: str
    description: str


@dataclass(frozen=True, slots=True)
class Guard:
    """A named condition an edge requires. ``label`` is what diagrams print."""

    name: str
    label: str
    description: str


@dataclass(frozen=True, slots=True)
class Edge:
    """One transition of the chart."""

    trigger: str
    source: State
    dest: State | None
    cause: str
    guards: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    automatic: bool = False
    delay: str | None = None
    input: str | None = None
    """The :class:`ChartInput` that fires the edge; ``None`` when the runtime fires it itself."""

    @property
    def internal(self) -> bool:
        """True when the edge runs without leaving its source state."""
        return self.dest is None

    @property
    def target(self) -> State:
        """The state the session is in after the edge (the source when internal)."""
        return self.source if self.dest is None else self.dest

    def label(self, guards: dict[str, Guard]) -> str:
        """``trigger [guard, not other]`` (plus ``after <delay>``) as diagrams show it."""
        conditions = [guards[name].label for name in self.guards]
        conditions += [f"not {guards[name].label}" for name in self.unless]
        text = f"{self.trigger} (after {self.delay})" if self.delay else self.trigger
        if conditions:
            text += f" [{', '.join(conditions)}]"
        return text


@dataclass(frozen=True, slots=True)
class Statechart:
    """States, guards and edges of one machine, with queries derived from them."""

    name: str
    states: tuple[State, ...]
    initial: State
    final: frozenset[State]
    guards: tuple[Guard, ...]
    edges: tuple[Edge, ...]
    inputs: tuple[ChartInput, ...] = ()
    groups: tuple[StateGroup, ...] = ()
    categories: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Trigger -> the ``category`` of its ``session.transition`` log line (default ``session``)."""
    meanings: Mapping[State, str] = field(default_factory=dict, compare=False)
    """State -> what it means, as the docs' states table shows it."""
    activities: tuple[Activity, ...] = ()
    """Work run while in a state (see :class:`Activity`); at most one per state."""

    def __post_init__(self) -> None:
        known = {guard.name for guard in self.guards}
        inputs = {i.name for i in self.inputs}
        fired: dict[tuple[str, State], str] = {}
        for edge in self.edges:
            for name in (*edge.guards, *edge.unless):
                if name not in known:
                    raise ValueError(f"edge {edge.trigger!r} names unknown guard {name!r}")
            if edge.source in self.final:
                raise ValueError(f"edge {edge.trigger!r} leaves final state {edge.source}")
            if edge.input is not None:
                # A chart that declares no inputs (a sketch, a test's variant) is not checked.
                if inputs and edge.input not in inputs:
                    raise ValueError(f"edge {edge.trigger!r} names unknown input {edge.input!r}")
                other = fired.setdefault((edge.input, edge.source), edge.trigger)
                if other != edge.trigger:
                    raise ValueError(
                        f"input {edge.input!r} fires both {other!r} and {edge.trigger!r}"
                        f" from {edge.source}"
                    )
        for group in self.groups:
            stray = [s for s in group.states if s not in self.states]
            if stray:
                raise ValueError(f"group {group.name!r} names states not in the chart: {stray}")
        busy: set[State] = set()
        for activity in self.activities:
            if activity.state in busy:
                raise ValueError(f"two activities in state {activity.state}")
            busy.add(activity.state)
            if not any(e.trigger == activity.done for e in self.edges_from(activity.state)):
                raise ValueError(
                    f"activity {activity.name!r} ends with {activity.done!r},"
                    f" which has no edge from {activity.state}"
                )
        unknown = set(self.categories) - {edge.trigger for edge in self.edges}
        if unknown:
            raise ValueError(f"categories for triggers the chart does not have: {sorted(unknown)}")

    def group(self, name: str) -> tuple[State, ...]:
        """The states of the group ``name``.

        Raises:
            KeyError: for a group the chart does not define.
        """
        for group in self.groups:
            if group.name == name:
                return group.states
        raise KeyError(f"chart {self.name!r} has no state group {name!r}")

    def category(self, trigger: str) -> str:
        """The log category of ``trigger``'s transitions."""
        return self.categories.get(trigger, "session")

    def input_triggers(self) -> dict[str, dict[State, str]]:
        """Input name -> (source state -> the trigger that input fires there)."""
        table: dict[str, dict[State, str]] = {i.name: {} for i in self.inputs}
        for edge in self.edges:
            if edge.input is not None:
                table.setdefault(edge.input, {})[edge.source] = edge.trigger
        return table

    @property
    def triggers(self) -> tuple[str, ...]:
        """Every trigger, in first-use order."""
        return tuple(dict.fromkeys(edge.trigger for edge in self.edges))

    @property
    def guard_map(self) -> dict[str, Guard]:
        return {guard.name: guard for guard in self.guards}

    def edges_from(self, source: State) -> Iterator[Edge]:
        return (edge for edge in self.edges if edge.source is source)

    def activity(self, state: State) -> Activity | None:
        """The activity run while in ``state``, if any."""
        for activity in self.activities:
            if activity.state is state:
                return activity
        return None

    def delayed_edges(self, source: State) -> tuple[Edge, ...]:
        """The edges out of ``source`` that a timer fires (``delay`` set), in chart order."""
        return tuple(e for e in self.edges_from(source) if e.delay is not None)

    def automatic_triggers(self, source: State) -> tuple[str, ...]:
        """Triggers the manager fires by itself on entering ``source``, in order."""
        return tuple(dict.fromkeys(e.trigger for e in self.edges_from(source) if e.automatic))

    def markdown_table(self) -> str:
        """Every edge, then every guard, as Markdown tables (docs embed them)."""
        guards = self.guard_map
        rows = ["| from | trigger | to | guard | fired by |", "|---|---|---|---|---|"]
        for edge in self.edges:
            conditions = [guards[name].label for name in edge.guards]
            conditions += [f"not {guards[name].label}" for name in edge.unless]
            kind = "automatic" if edge.automatic else f"after `{edge.delay}`" if edge.delay else ""
            dest = "(stays)" if edge.dest is None else f"`{edge.dest.value}`"
            cause = f"{kind}: {edge.cause}" if kind else edge.cause
            rows.append(
                f"| `{edge.source.value}` | `{edge.trigger}` | {dest}"
                f" | {', '.join(conditions) or '-'} | {cause} |"
            )
        rows += ["", "| guard | shown as | holds when |", "|---|---|---|"]
        rows += [f"| `{g.name}` | {g.label} | {g.description} |" for g in self.guards]
        return "\n".join(rows) + "\n"

    def states_table(self) -> str:
        """Every state with its meaning and groups, then every input, as Markdown tables."""
        rows = ["| state | meaning | groups |", "|---|---|---|"]
        for state in self.states:
            groups = ", ".join(f"`{g.name}`" for g in self.groups if state in g.states)
            rows.append(f"| `{state.value}` | {self.meanings.get(state, '')} | {groups or '-'} |")
        rows += ["", "| group | states | means |", "|---|---|---|"]
        rows += [
            f"| `{g.name}` | {', '.join(f'`{s.value}`' for s in g.states)} | {g.description} |"
            for g in self.groups
        ]
        rows += ["", "| input | fires | log category | a duplicate in |", "|---|---|---|---|"]
        table = self.input_triggers()
        for inp in self.inputs:
            fires = ", ".join(dict.fromkeys(f"`{t}`" for t in table[inp.name].values()))
            dup = ", ".join(f"`{s.value}`" for s in inp.duplicate_in)
            rows.append(f"| `{inp.name}` | {fires or '-'} | {inp.category} | {dup or '-'} |")
        return "\n".join(rows) + "\n"

    def is_edge(self, source: State, dest: State, trigger: str) -> bool:
        """Whether ``source --trigger--> dest`` is a transition of this chart."""
        return any(
            edge.source is source and edge.target is dest and edge.trigger == trigger
            for edge in self.edges
        )


_S = State

PARTICIPANT_CHART = Statechart(
    name="participant",
    states=tuple(State),
    initial=State.CONNECTING,
    final=frozenset({State.REMOVED}),
    guards=(
        Guard(
            "is_current_sid",
            "current sid",
            "The event carries the session's current participant sid; anything else is stale.",
        ),
        Guard(
            "is_new_sid",
            "new sid",
            "A participant_connected for this key carries a sid other than the current one.",
        ),
        Guard(
            "has_pending_connection",
            "new connection waiting",
            "A takeover left the new connection waiting for the old one's cleanup.",
        ),
        Guard(
            "grace_allowed",
            "grace allowed",
            "grace_period > 0, the disconnect reason is not in no_grace_reasons,"
            " and the manager is not shutting down.",
        ),
        Guard(
            "is_current_timer",
            "current timer",
            "The expiry comes from the timer armed on the latest entry into grace.",
        ),
        Guard(
            "participant_is_active",
            "participant active",
            "The new connection is already ACTIVE or already publishes tracks.",
        ),
        Guard(
            "stored_cleaned",
            "stored cleaned",
            "The restored session's connection had ended and been cleaned (it was in grace).",
        ),
        Guard(
            "connection_present",
            "connection present",
            "The restored session's connection is still in the room (and was not being cleaned).",
        ),
    ),
    edges=(
        Edge(
            "activate",
            _S.CONNECTING,
            _S.ACTIVE,
            "participant_active, or a participant that is already ACTIVE",
            guards=("is_current_sid",),
            input="participant_active",
        ),
        Edge(
            "publish_track",
            _S.CONNECTING,
            _S.ACTIVE,
            "track_published (the first track also activates)",
            guards=("is_current_sid",),
            input="track_published",
        ),
        Edge(
            "publish_track",
            _S.ACTIVE,
            None,
            "track_published: the track sid is remembered",
            guards=("is_current_sid",),
            input="track_published",
        ),
        Edge(
            "unpublish_track",
            _S.CONNECTING,
            None,
            "track_unpublished: the reference is dropped",
            guards=("is_current_sid",),
            input="track_unpublished",
        ),
        Edge(
            "unpublish_track",
            _S.ACTIVE,
            None,
            "track_unpublished: the reference is dropped",
            guards=("is_current_sid",),
            input="track_unpublished",
        ),
        Edge(
            "disconnect",
            _S.CONNECTING,
            _S.DISCONNECTING,
            "participant_disconnected",
            guards=("is_current_sid",),
            input="participant_disconnected",
        ),
        Edge(
            "disconnect",
            _S.ACTIVE,
            _S.DISCONNECTING,
            "participant_disconnected",
            guards=("is_current_sid",),
            input="participant_disconnected",
        ),
        Edge(
            "takeover",
            _S.CONNECTING,
            _S.DISCONNECTING,
            "participant_connected with a new sid for the same session key",
            guards=("is_new_sid",),
            input="participant_connected",
        ),
        Edge(
            "takeover",
            _S.ACTIVE,
            _S.DISCONNECTING,
            "participant_connected with a new sid for the same session key",
            guards=("is_new_sid",),
            input="participant_connected",
        ),
        Edge(
            "shutdown",
            _S.CONNECTING,
            _S.DISCONNECTING,
            "aclose() or the room disconnected",
            input="shutdown",
        ),
        Edge(
            "shutdown",
            _S.ACTIVE,
            _S.DISCONNECTING,
            "aclose() or the room disconnected",
            input="shutdown",
        ),
        Edge(
            "cleanup_done",
            _S.DISCONNECTING,
            _S.CLEANED,
            "every cleanup callback returned, failed or timed out",
        ),
        Edge(
            "hold",
            _S.CLEANED,
            _S.GRACE,
            "the grace timer is armed",
            guards=("grace_allowed",),
            unless=("has_pending_connection",),
            automatic=True,
        ),
        Edge(
            "release",
            _S.CLEANED,
            _S.REMOVED,
            "no grace: removed at once",
            unless=("grace_allowed", "has_pending_connection"),
            automatic=True,
        ),
        Edge(
            "rejoin",
            _S.CLEANED,
            _S.RECONNECTED,
            "the connection that took over is bound to the session",
            guards=("has_pending_connection",),
            automatic=True,
        ),
        Edge(
            "reconnect",
            _S.GRACE,
            _S.RECONNECTED,
            "participant_connected for the same session key inside the window",
            input="participant_connected",
        ),
        Edge(
            "expire",
            _S.GRACE,
            _S.REMOVED,
            "the grace window ran out",
            guards=("is_current_timer",),
            delay="grace_period",
            input="grace_expired",
        ),
        Edge(
            "shutdown", _S.GRACE, _S.REMOVED, "aclose() or the room disconnected", input="shutdown"
        ),
        Edge(
            "resume",
            _S.RECONNECTED,
            _S.ACTIVE,
            "the new connection is already active",
            guards=("participant_is_active",),
            automatic=True,
        ),
        Edge(
            "resume",
            _S.RECONNECTED,
            _S.CONNECTING,
            "the new connection is still joining",
            unless=("participant_is_active",),
            automatic=True,
        ),
        Edge(
            "restore",
            _S.CONNECTING,
            _S.CLEANED,
            "restored from a durable store: its window was open (the grace window goes on)",
            guards=("stored_cleaned",),
            input="restored",
        ),
        Edge(
            "restore",
            _S.CONNECTING,
            _S.CONNECTING,
            "restored from a durable store: its connection is still in the room",
            guards=("connection_present",),
            input="restored",
        ),
        Edge(
            "restore",
            _S.CONNECTING,
            _S.DISCONNECTING,
            "restored from a durable store: its connection ended while no process watched it,"
            " or during its cleanup (which runs here)",
            input="restored",
        ),
    ),
    inputs=(
        ChartInput(
            "participant_connected",
            "connect",
            "A participant joined (or the same one announced again).",
            duplicate_in=tuple(State),
        ),
        ChartInput(
            "participant_active",
            "connect",
            "The participant became ACTIVE.",
            duplicate_in=(State.ACTIVE,),
        ),
        ChartInput(
            "participant_disconnected",
            "disconnect",
            "The participant left.",
            duplicate_in=tuple(s for s in State if s not in CONNECTED),
        ),
        ChartInput("track_published", "track", "The participant published a track."),
        ChartInput("track_unpublished", "track", "The participant unpublished a track."),
        ChartInput("grace_expired", "session", "The grace timer fired."),
        ChartInput("shutdown", "shutdown", "aclose(), or the room disconnected."),
        ChartInput(
            "restored",
            "store",
            "A session a durable store kept, rebuilt by a new process (docs/stores.md).",
        ),
    ),
    activities=(
        Activity(
            "cleanup",
            _S.DISCONNECTING,
            "cleanup_done",
            "the cleanup callbacks, in registration order, each bounded by cleanup_timeout",
        ),
    ),
    groups=(
        StateGroup("connected", CONNECTED, "a live connection; disconnect or shutdown cleans it"),
        StateGroup("bound", BOUND, "a connection is bound: the participant is held"),
        StateGroup("may_hold_tracks", MAY_HOLD_TRACKS, "track sids may be remembered"),
        StateGroup(
            "may_have_pending", MAY_HAVE_PENDING, "a takeover's new connection may be waiting"
        ),
        StateGroup("cleaned", CLEANED, "the ended connection was cleaned; none is bound"),
    ),
    categories={
        "activate": "connect",
        "publish_track": "track",
        "unpublish_track": "track",
        "disconnect": "disconnect",
        "takeover": "connect",
        "shutdown": "shutdown",
        "cleanup_done": "cleanup",
        "hold": "session",
        "release": "session",
        "rejoin": "connect",
        "reconnect": "connect",
        "expire": "session",
        "resume": "session",
        "restore": "store",
    },
    meanings={
        State.CONNECTING: "the participant joined; no media yet",
        State.ACTIVE: "`participant_active` arrived, or the participant published a track",
        State.DISCONNECTING: (
            "the connection ended; cleanup callbacks are running. The session still holds the"
            " participant object and whatever track sids are left (over a real connection the"
            " SDK reports `track_unpublished` for every track *before*"
            " `participant_disconnected`, so usually none: record what you need while the user"
            " is active)"
        ),
        State.CLEANED: (
            "cleanup finished once; our references to tracks and the participant are dropped"
            " (transient)"
        ),
        State.GRACE: "waiting `grace_period` seconds for the same user to return",
        State.RECONNECTED: (
            "the user came back; the session is bound to the new connection (transient)"
        ),
        State.REMOVED: (
            "final: the session is forgotten; the same key later starts a fresh session"
        ),
    },
)
"""The participant lifecycle. See ``docs/concepts.md`` for a walk through it."""
