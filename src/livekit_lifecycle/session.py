"""What the manager knows about one user: :class:`Session` and its :class:`Transition` history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from livekit import rtc

from .statechart import State
from .stores._data import SessionData

if TYPE_CHECKING:
    from ._bookkeeping import Bookkeeping
    from .stores import Claim

__all__ = ["Session", "Transition"]


class Transition(NamedTuple):
    """One state change of a session, as recorded in :attr:`Session.history`.

    Immutable (a named tuple: one is built per transition, and that is the
    cheapest immutable record Python has).

    Attributes:
        source: State before.
        dest: State after.
        trigger: The chart's trigger name (``disconnect``, ``expire``...).
        sid: The participant sid the session was bound to when it happened.
        at: Wall-clock time (``time.time()``) of the change.
    """

    source: State
    dest: State
    trigger: str
    sid: str
    at: float

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Transition:
        """The inverse of :meth:`as_dict`.

        Raises:
            ValueError: for a dict that is not a transition.
        """
        try:
            return cls(
                State(raw["source"]),
                State(raw["dest"]),
                str(raw["trigger"]),
                str(raw["sid"]),
                float(raw["at"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"not a transition: {raw!r} ({exc})") from None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "source": self.source.value,
            "dest": self.dest.value,
            "trigger": self.trigger,
            "sid": self.sid,
            "at": self.at,
        }


class _History(list[Transition]):
    """The latest transitions, oldest first, at most ``maxlen`` of them.

    What ``deque(maxlen=...)`` does, for a fraction of the memory: an empty
    deque already allocates a 64-slot block (~630 bytes, the largest part of
    a session), a list holding a few transitions ~100 bytes. Dropping the
    oldest entry moves at most ``maxlen`` pointers.
    """

    __slots__ = ("maxlen",)

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def append(self, transition: Transition) -> None:
        list.append(self, transition)
        if len(self) > self.maxlen:
            del self[0]


class Session:
    """One user's session: survives a reconnect inside the grace window.

    Sessions are created and changed only by their :class:`~livekit_lifecycle.LifecycleManager`;
    everything here is read-only except :attr:`data`, which belongs to the
    application and is kept across reconnects (and, with a durable
    :mod:`store <livekit_lifecycle.stores>`, across restarts of the agent).

    This is the user's view. The manager's runtime writes its fields and keeps
    its own bookkeeping (input queue, timers, a takeover's waiting connection)
    in a private record that exists only while it has something to hold.
    """

    __slots__ = (
        "_claim",
        "_cleanups",
        "_connected_at",
        "_data",
        "_disconnect_reason",
        "_disconnected_at",
        "_history",
        "_identity",
        "_key",
        "_participant",
        "_reconnects",
        "_record",
        "_sid",
        "_state",
        "_tracks",
        "_user_id",
    )

    def __init__(
        self, key: str, participant: rtc.RemoteParticipant, history_limit: int, now: float
    ) -> None:
        identity = participant.identity
        self._key = key
        # One string object when the key is the identity (the default).
        self._identity = key if identity == key else identity
        self._sid = participant.sid
        self._participant: rtc.RemoteParticipant | None = participant
        self._user_id: str | None = None
        self._data: dict[str, Any] | None = None
        """Made on first use: most sessions of a busy room never get data."""
        self._state = State.CONNECTING
        self._tracks: set[str] | None = None
        """Track sids; ``None`` (not an empty set, ~200 bytes) while there are none."""
        self._connected_at = now
        self._disconnected_at: float | None = None
        self._disconnect_reason: int | None = None
        self._reconnects = 0
        self._cleanups = 0
        self._history = _History(history_limit)
        self._claim: Claim | None = None
        self._record: Bookkeeping | None = None
        """The runtime's bookkeeping for this session (see ``_runtime``), when it has any."""

    @property
    def data(self) -> dict[str, Any]:
        """Application state. Kept across reconnects; gone when the session is removed.

        With a durable store it is a :class:`~livekit_lifecycle.stores.SessionData`
        (still a ``dict``): a value JSON cannot represent raises ``TypeError``
        at assignment, and every change is persisted behind the event path.
        """
        data = self._data
        if data is None:
            data = self._data = {}
        return data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        current = self._data
        if not isinstance(current, SessionData):
            self._data = value
            return
        # A checked mapping stays checked, and observed: copy into a new one.
        self._data = current.replaced(value)

    @property
    def key(self) -> str:
        """The session key (by default the participant identity)."""
        return self._key

    @property
    def identity(self) -> str:
        """Identity of the connection the session is bound to (the latest one)."""
        return self._identity

    @property
    def sid(self) -> str:
        """Participant sid of the connection the session is bound to (the latest one)."""
        return self._sid

    @property
    def user_id(self) -> str | None:
        """Set with :meth:`LifecycleManager.set_user_id`; kept across reconnects."""
        return self._user_id

    @property
    def state(self) -> State:
        return self._state

    @property
    def tracks(self) -> frozenset[str]:
        """Track sids published by the current connection (empty once it has ended)."""
        tracks = self._tracks
        return frozenset(tracks) if tracks else frozenset()

    @property
    def participant(self) -> rtc.RemoteParticipant | None:
        """The live participant object, or ``None`` once its connection ended."""
        return self._participant

    @property
    def connected_at(self) -> float:
        """Wall-clock time the latest connection was bound to the session."""
        return self._connected_at

    @property
    def disconnected_at(self) -> float | None:
        """Wall-clock time the latest connection ended, ``None`` while connected."""
        return self._disconnected_at

    @property
    def disconnect_reason(self) -> int | None:
        """``rtc.DisconnectReason`` of the latest disconnect (``None`` if unknown or connected)."""
        return self._disconnect_reason

    @property
    def reconnects(self) -> int:
        """How many times a new connection was bound to this session."""
        return self._reconnects

    @property
    def cleanups(self) -> int:
        """Completed cleanup runs: one per connection that ended."""
        return self._cleanups

    @property
    def cleanup_claim(self) -> Claim | None:
        """The durable store's claim on the cleanup of the current connection, once won.

        ``token`` is the claim's fencing token; ``retry`` is true when this process
        took the claim over from one that died (its lease expired) before the
        cleanup was written as done, so the callbacks may have run, in part,
        there: an idempotent callback dedupes with ``(session.sid, token)``.
        ``None`` with a :class:`~livekit_lifecycle.stores.MemoryStore`, or when
        the store did not answer (an unverified cleanup). See docs/guarantees.md.
        """
        return self._claim

    @property
    def connections(self) -> int:
        """Connections bound to this session so far (``reconnects + 1``)."""
        return self._reconnects + 1

    @property
    def history(self) -> tuple[Transition, ...]:
        """The latest transitions, oldest first, at most ``history_limit`` of them."""
        return tuple(self._history)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``data`` is left out: it belongs to the application)."""
        return {
            "key": self._key,
            "identity": self._identity,
            "sid": self._sid,
            "state": self._state.value,
            "user_id": self._user_id,
            "tracks": sorted(self._tracks or ()),
            "reconnects": self._reconnects,
            "cleanups": self._cleanups,
            "connected_at": self._connected_at,
            "disconnected_at": self._disconnected_at,
            "disconnect_reason": reason_name(self._disconnect_reason),
            "history": [t.as_dict() for t in self._history],
        }

    def __repr__(self) -> str:
        return (
            f"Session(key={self._key!r}, sid={self._sid!r}, state={self._state.value},"
            f" user_id={self._user_id!r}, reconnects={self._reconnects},"
            f" cleanups={self._cleanups})"
        )


def reason_name(reason: int | None) -> str | None:
    """``CLIENT_INITIATED`` for a known ``rtc.DisconnectReason``, the number for an unknown one."""
    if reason is None:
        return None
    try:
        return rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
    except (ValueError, TypeError):  # an unknown number; anything else an SDK might send
        return str(reason)
