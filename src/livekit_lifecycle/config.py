"""Configuration of a :class:`~livekit_lifecycle.LifecycleManager`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from livekit import rtc

from ._numbers import require_count, require_seconds
from .stores import MemoryStore, SessionStore

__all__ = ["DEFAULT_KINDS", "DEFAULT_NO_GRACE_REASONS", "LifecycleConfig", "SessionKey"]

SessionKey = Callable[[rtc.RemoteParticipant], str]
"""Maps a participant to the key its session is stored under (default: its identity)."""

DEFAULT_NO_GRACE_REASONS: frozenset[int] = frozenset(
    {
        rtc.DisconnectReason.PARTICIPANT_REMOVED,
        rtc.DisconnectReason.ROOM_DELETED,
        rtc.DisconnectReason.ROOM_CLOSED,
        rtc.DisconnectReason.USER_REJECTED,
    }
)
"""Disconnects that mean "this user is not coming back": no grace window."""

DEFAULT_KINDS: frozenset[int] = frozenset(
    {
        rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
        rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
    }
)
"""Participant kinds that are users. Agents, egress and ingress are not tracked."""

_MAX_HISTORY = 1_000_000
_VALID_REASONS = frozenset(rtc.DisconnectReason.values())
_VALID_KINDS = frozenset(rtc.ParticipantKind.values())


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """How a manager tracks participants. Every field is validated at construction.

    Durations are finite seconds, at most 1e9 (about 31 years), so every window
    fits a Redis TTL and an event-loop timer; anything else is a ``ValueError``
    naming the field.

    Attributes:
        grace_period: Seconds a disconnected user's session is kept for a
            reconnect (``0`` disables the window). A window longer than the
            room's ``departure_timeout`` (20 s by default) only helps if the
            room is configured to outlive it: see ``docs/configuration.md``.
        cleanup_timeout: Seconds each cleanup callback (and each async
            notification callback) may take before it is abandoned.
        shutdown_timeout: Seconds the whole of :meth:`LifecycleManager.aclose` may take.
        history_limit: Transitions kept per session (oldest dropped first), 1 to 1,000,000.
        session_key: Maps a participant to its session key. Default: identity.
            Give one when several identities belong to one user (for example
            when every page load gets a fresh identity carrying a user id).
        no_grace_reasons: ``rtc.DisconnectReason`` values that remove the
            session at once instead of opening the grace window. Any set or
            iterable is accepted; it is stored as a ``frozenset``.
        kinds: ``rtc.ParticipantKind`` values that are tracked (stored as a ``frozenset``).
        close_on_room_disconnect: Shut the manager down when the room emits
            ``disconnected`` (the agent's own connection is gone for good).
        check_invariants: Debug aid: check the lifecycle invariants
            (:mod:`livekit_lifecycle.invariants`) after every transition; a
            violation is logged as ``invariant.violated`` and counted in
            ``stats["invariant_violations"]``. Costs a few µs per transition.
        store: Where sessions are kept (:mod:`livekit_lifecycle.stores`). The
            default :class:`~livekit_lifecycle.stores.MemoryStore` keeps them in
            the manager only, with no store work at all; a durable store
            (:class:`~livekit_lifecycle.stores.RedisStore`) lets them survive the
            process and be shared by the processes on a room: see ``docs/stores.md``.
            Not part of the config's equality or hash.
    """

    grace_period: float = 30.0
    cleanup_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    history_limit: int = 50
    session_key: SessionKey | None = None
    no_grace_reasons: AbstractSet[int] = field(default=DEFAULT_NO_GRACE_REASONS)
    kinds: AbstractSet[int] = field(default=DEFAULT_KINDS)
    close_on_room_disconnect: bool = True
    check_invariants: bool = False
    store: SessionStore = field(default_factory=MemoryStore, compare=False)

    def __post_init__(self) -> None:
        require_seconds("grace_period", self.grace_period, allow_zero=True)
        require_seconds("cleanup_timeout", self.cleanup_timeout, allow_zero=False)
        require_seconds("shutdown_timeout", self.shutdown_timeout, allow_zero=False)
        require_count("history_limit", self.history_limit, minimum=1, maximum=_MAX_HISTORY)
        if self.session_key is not None and not callable(self.session_key):
            raise ValueError(f"session_key must be callable, got {self.session_key!r}")
        # Accept any iterable (a list is the natural thing to type) but store a
        # frozenset, so the config stays hashable and immutable.
        object.__setattr__(
            self,
            "no_grace_reasons",
            _enum_set(
                "no_grace_reasons", self.no_grace_reasons, _VALID_REASONS, "DisconnectReason"
            ),
        )
        object.__setattr__(
            self, "kinds", _enum_set("kinds", self.kinds, _VALID_KINDS, "ParticipantKind")
        )
        if not self.kinds:
            raise ValueError("kinds must name at least one rtc.ParticipantKind")
        if not isinstance(self.store, SessionStore):
            raise ValueError(f"store must be a SessionStore, got {self.store!r}")
        for flag in ("close_on_room_disconnect", "check_invariants"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")

    def key_of(self, participant: rtc.RemoteParticipant) -> str:
        """The session key for ``participant`` under this config."""
        if self.session_key is None:
            return participant.identity
        return self.session_key(participant)


def _enum_set(name: str, values: Iterable[int], valid: frozenset[int], enum: str) -> frozenset[int]:
    try:
        items = frozenset(values)
    except TypeError:
        raise ValueError(f"{name} must be an iterable of rtc.{enum} values") from None
    unknown = sorted((v for v in items if isinstance(v, bool) or v not in valid), key=repr)
    if unknown:
        raise ValueError(f"{name} holds values that are not rtc.{enum}: {unknown!r}")
    return items
