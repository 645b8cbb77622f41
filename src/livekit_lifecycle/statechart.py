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
field that times it (XState's ``after``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "CONNECTED",
    "PARTICIPANT_CHART",
    "Edge",
    "Guard",
    "State",
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


CONNECTED: tuple[State, ...] = (State.CONNECTING, State.ACTIVE)
"""States in which a connection is bound and live: a disconnect or a shutdown starts cleanup.

A tuple, not a set: ``in`` on a short tuple compares identities first, while
hashing a ``str`` enum member calls Python code; the runtime asks this per event.
"""


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

    def __post_init__(self) -> None:
        known = {guard.name for guard in self.guards}
        for edge in self.edges:
            for name in (*edge.guards, *edge.unless):
                if name not in known:
                    raise ValueError(f"edge {edge.trigger!r} names unknown guard {name!r}")
            if edge.source in self.final:
                raise ValueError(f"edge {edge.trigger!r} leaves final state {edge.source}")

    @property
    def triggers(self) -> tuple[str, ...]:
        """Every trigger, in first-use order."""
        return tuple(dict.fromkeys(edge.trigger for edge in self.edges))

    @property
    def guard_map(self) -> dict[str, Guard]:
        return {guard.name: guard for guard in self.guards}

    def edges_from(self, source: State) -> Iterator[Edge]:
        return (edge for edge in self.edges if edge.source is source)

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
    ),
    edges=(
        Edge(
            "activate",
            _S.CONNECTING,
            _S.ACTIVE,
            "participant_active, or a participant that is already ACTIVE",
            guards=("is_current_sid",),
        ),
        Edge(
            "publish_track",
            _S.CONNECTING,
            _S.ACTIVE,
            "track_published (the first track also activates)",
            guards=("is_current_sid",),
        ),
        Edge(
            "publish_track",
            _S.ACTIVE,
            None,
            "track_published: the track sid is remembered",
            guards=("is_current_sid",),
        ),
        Edge(
            "unpublish_track",
            _S.CONNECTING,
            None,
            "track_unpublished: the reference is dropped",
            guards=("is_current_sid",),
        ),
        Edge(
            "unpublish_track",
            _S.ACTIVE,
            None,
            "track_unpublished: the reference is dropped",
            guards=("is_current_sid",),
        ),
        Edge(
            "disconnect",
            _S.CONNECTING,
            _S.DISCONNECTING,
            "participant_disconnected",
            guards=("is_current_sid",),
        ),
        Edge(
            "disconnect",
            _S.ACTIVE,
            _S.DISCONNECTING,
            "participant_disconnected",
            guards=("is_current_sid",),
        ),
        Edge(
            "takeover",
            _S.CONNECTING,
            _S.DISCONNECTING,
            "participant_connected with a new sid for the same session key",
            guards=("is_new_sid",),
        ),
        Edge(
            "takeover",
            _S.ACTIVE,
            _S.DISCONNECTING,
            "participant_connected with a new sid for the same session key",
            guards=("is_new_sid",),
        ),
        Edge("shutdown", _S.CONNECTING, _S.DISCONNECTING, "aclose() or the room disconnected"),
        Edge("shutdown", _S.ACTIVE, _S.DISCONNECTING, "aclose() or the room disconnected"),
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
        ),
        Edge(
            "expire",
            _S.GRACE,
            _S.REMOVED,
            "the grace window ran out",
            guards=("is_current_timer",),
            delay="grace_period",
        ),
        Edge("shutdown", _S.GRACE, _S.REMOVED, "aclose() or the room disconnected"),
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
    ),
)
"""The participant lifecycle. See ``docs/concepts.md`` for a walk through it."""
