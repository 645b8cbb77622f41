""":class:`SessionRecord`: what a store keeps of one session."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import operator
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from ._json import MAX_INT, check_json

__all__ = [
    "MAX_RECORD_BYTES",
    "MAX_TIME",
    "RECORD_VERSION",
    "SessionRecord",
    "SkippedRecord",
    "UnreadableRecord",
    "FIELD_ORDER",
    "collector_paused",
    "decode_record",
    "fast_fields",
    "parse_record",
    "record_ttl",
]

RECORD_VERSION = 1
MAX_TIME = 1e10
"""Latest wall-clock time a record may hold (the year 2286): times beyond are corrupt."""
MAX_RECORD_BYTES = 16 * 1024 * 1024
"""Largest stored record read (16 MiB): a bigger one is corrupt, or not ours."""

_NUMBER = (int, float)
FIELD_ORDER = (
    "room",
    "key",
    "state",
    "identity",
    "sid",
    "user_id",
    "data",
    "reconnects",
    "cleanups",
    "connected_at",
    "disconnected_at",
    "grace_deadline",
    "history",
    "owner",
    "updated_at",
    "conversation",
)
"""The fields :func:`fast_fields` returns, in :meth:`SessionRecord.as_dict`'s order."""
_FIELDS = operator.itemgetter(*FIELD_ORDER[:-1])
"""Every field a record must have, in one call (the fast path's)."""
STATES = frozenset(
    {"connecting", "active", "disconnecting", "cleaned", "grace", "reconnected", "removed"}
)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session as a store keeps it, under ``(room, key)``.

    Attributes:
        room: Room name.
        key: Session key.
        state: The statechart state's value (``"active"``, ``"grace"``...).
        identity: Identity of the latest connection.
        sid: Participant sid of the latest connection (the one a cleanup claim is for).
        user_id: The application's user id.
        data: The application's :attr:`Session.data`, JSON values only.
        reconnects: Connections bound after the first.
        cleanups: Cleanup runs completed, over every process that held the session.
        connected_at: Wall-clock time the latest connection was bound.
        disconnected_at: Wall-clock time the latest connection ended (``None`` while connected).
        grace_deadline: Wall-clock time the grace window ends (``None`` outside ``grace``).
        history: The session's history (``Transition.as_dict()`` form), oldest
            first: bounded by the manager's ``history_limit``.
        owner: The process (manager) that wrote the record: ``host:pid:nonce``.
        updated_at: Wall-clock time of the write.
        conversation: The linked ``AgentSession``'s conversation (chat history
            and JSON userdata, bounded), for the session a job's agent talks
            to; ``None`` for every other session (see ``docs/stores.md``).
    """

    room: str
    key: str
    state: str
    identity: str
    sid: str
    user_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    reconnects: int = 0
    cleanups: int = 0
    connected_at: float = 0.0
    disconnected_at: float | None = None
    grace_deadline: float | None = None
    history: tuple[dict[str, Any], ...] = ()
    owner: str = ""
    updated_at: float = field(default_factory=time.time)
    conversation: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the one :meth:`to_json` writes, less the version)."""
        fields: dict[str, Any] = {
            "room": self.room,
            "key": self.key,
            "state": self.state,
            "identity": self.identity,
            "sid": self.sid,
            "user_id": self.user_id,
            "data": self.data,
            "reconnects": self.reconnects,
            "cleanups": self.cleanups,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "grace_deadline": self.grace_deadline,
            "history": list(self.history),
            "owner": self.owner,
            "updated_at": self.updated_at,
        }
        if self.conversation is not None:  # one session per job has one: no bytes for the rest
            fields["conversation"] = self.conversation
        return fields

    def to_json(self) -> str:
        """The stored form.

        Raises:
            TypeError: when ``data`` holds something JSON cannot represent
                (possible only through in-place mutation of a nested value).
        """
        check_json(self.data, "session data")
        if self.conversation is not None:
            check_json(self.conversation, "conversation")
        fields = self.as_dict()
        fields["v"] = RECORD_VERSION
        return json.dumps(fields, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(
        cls, text: str | bytes, *, room: str | None = None, key: str | None = None
    ) -> SessionRecord:
        """Parse a stored record: :func:`parse_record`."""
        return parse_record(text, room=room, key=key)

    def ttl(self, grace_period: float, margin: float, now: float | None = None) -> float:
        """See :func:`record_ttl`."""
        return record_ttl(self, grace_period, margin, now)


def record_ttl(
    record: SessionRecord, grace_period: float, margin: float, now: float | None = None
) -> float:
    """Seconds a store keeps ``record`` unless it is written again.

    In ``grace``: what is left of the window plus ``margin``. Otherwise the
    whole window plus ``margin``: a live manager rewrites its records well
    before that (every third of it), so only the records of a process that
    died expire, once a replacement could no longer have used them.
    """
    if record.grace_deadline is not None:
        remaining = record.grace_deadline - (time.time() if now is None else now)
        return max(remaining, 0.0) + margin
    return grace_period + margin


class UnreadableRecord(ValueError):
    """A stored record that cannot be restored; ``reason`` says why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SkippedRecord(NamedTuple):
    """A stored record a store read and could not restore (see :func:`parse_record`)."""

    where: str
    """Where it was read (the Redis key, for :class:`~livekit_lifecycle.stores.RedisStore`)."""
    room: str | None
    """The room it was read under, when the store knows it."""
    key: str | None
    """The session key it was read under, when the store knows it."""
    reason: str


def parse_record(
    text: str | bytes, *, room: str | None = None, key: str | None = None
) -> SessionRecord:
    """The record ``text`` holds, checked field by field; the one decoder every store uses.

    ``room`` and ``key`` are where the store read it (its Redis key, say): a
    record that names another room or key is refused, so a record copied or
    written under the wrong key can never become another user's session.
    Every number must be finite and bounded (times within
    ``0..``:data:`MAX_TIME`, counters within ``0..2**63-1``), ``data`` must be
    what :class:`SessionData` accepts, and the text no bigger than
    :data:`MAX_RECORD_BYTES`: what passes can be restored, armed as a timer
    and written back without an error.

    Raises:
        UnreadableRecord: (a ``ValueError``) for anything else, with the reason.
    """
    return _record_from_fields(decode_record(text), room=room, key=key)


def decode_record(text: str | bytes) -> Any:
    """``text`` decoded as JSON (:func:`parse_record`'s first half): any JSON value.

    orjson decodes (strict JSON: no ``NaN``, no ``Infinity``, no float out of
    range, UTF-8 only, nesting bounded); what it refuses is decoded again by
    the standard library, to say why (or to let the field checks say it).
    One difference remains: orjson reads an integer beyond 64 bits as a float,
    so such a value in ``data`` (which no manager writes: :class:`SessionData`
    refuses it) is restored as that float instead of failing the record.

    Raises:
        UnreadableRecord: for a text that is not JSON or is too big.
    """
    if len(text) > MAX_RECORD_BYTES:
        raise UnreadableRecord(f"{len(text)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # decoded again: the standard library's reasons are the ones logs know
    try:
        # What orjson refuses and this takes (an int beyond 64 bits) is refused by
        # the field checks then, which name the field.
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise UnreadableRecord("nested too deeply to parse") from None
    except (TypeError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError, huge ints
        raise UnreadableRecord(f"not JSON: {_short(exc)}") from None


def _record_from_fields(
    raw: Any, *, room: str | None = None, key: str | None = None
) -> SessionRecord:
    """:func:`parse_record`'s second half: the record a decoded JSON value holds.

    The common case (a record a manager wrote) is checked in one pass of exact
    type tests; anything that fails it is checked again field by field, to
    name the field and why.
    """
    record = _fast(raw)
    if record is not None:
        _check_place(record, room, key)
        return record
    return _checked(raw, room, key)


def _fast(raw: Any) -> SessionRecord | None:
    """The record ``raw`` holds if every field is as a manager writes it; None otherwise."""
    values = fast_fields(raw)
    if values is None:
        return None
    (
        r_room,
        r_key,
        state,
        identity,
        sid,
        user_id,
        data,
        reconnects,
        cleanups,
        connected_at,
        disconnected_at,
        grace_deadline,
        history,
        owner,
        updated_at,
        conversation,
    ) = values
    return SessionRecord(
        room=r_room,
        key=r_key,
        state=state,
        identity=identity,
        sid=sid,
        user_id=user_id,
        data=data,
        reconnects=reconnects,
        cleanups=cleanups,
        connected_at=connected_at,
        disconnected_at=disconnected_at,
        grace_deadline=grace_deadline,
        history=tuple(history),
        owner=owner,
        updated_at=updated_at,
        conversation=conversation,
    )


def fast_fields(raw: Any) -> tuple[Any, ...] | None:
    """The one pass of exact type checks (the common case: what a manager wrote).

    Returns the fields in :data:`FIELD_ORDER` (times as floats, ``history`` the
    entries kept, a list; ``conversation`` last), or ``None`` when any check
    fails: :func:`parse_record` then checks field by field, to say why.
    """
    if type(raw) is not dict or raw.get("v") != RECORD_VERSION:
        return None
    try:
        (
            r_room,
            r_key,
            state,
            identity,
            sid,
            user_id,
            data,
            reconnects,
            cleanups,
            connected_at,
            disconnected_at,
            grace_deadline,
            history,
            owner,
            updated_at,
        ) = _FIELDS(raw)
    except KeyError:
        return None  # _checked names the missing field
    conversation = raw.get("conversation")
    # JSON decodes to exact types: `type(x) is str` is the whole check (and no bool
    # passes for an int). A NaN fails every comparison; orjson never yields one.
    if not (
        type(r_room) is str
        and type(r_key) is str
        and type(state) is str
        and state in STATES
        and type(identity) is str
        and type(sid) is str
        and type(owner) is str
        and (user_id is None or type(user_id) is str)
        and type(data) is dict
        and type(history) is list
        and type(reconnects) is int
        and 0 <= reconnects <= MAX_INT
        and type(cleanups) is int
        and 0 <= cleanups <= MAX_INT
        and type(connected_at) in _NUMBER
        and 0 <= connected_at <= MAX_TIME
        and type(updated_at) in _NUMBER
        and 0 <= updated_at <= MAX_TIME
        and (
            disconnected_at is None
            or (type(disconnected_at) in _NUMBER and 0 <= disconnected_at <= MAX_TIME)
        )
        and (
            grace_deadline is None
            or (type(grace_deadline) in _NUMBER and 0 <= grace_deadline <= MAX_TIME)
        )
    ):
        return None
    if data:
        try:
            check_json(data, "data")
        except TypeError:
            return None
    return (
        r_room,
        r_key,
        state,
        identity,
        sid,
        user_id,
        data,
        reconnects,
        cleanups,
        float(connected_at),
        None if disconnected_at is None else float(disconnected_at),
        None if grace_deadline is None else float(grace_deadline),
        _history(history),
        owner,
        float(updated_at),
        None if conversation is None else _conversation(conversation),
    )


def _checked(raw: Any, room: str | None, key: str | None) -> SessionRecord:
    """Field by field, for the reason: what :func:`_fast` refused, or passes here too."""
    if not isinstance(raw, dict):
        raise UnreadableRecord(f"not a session record: a JSON {type(raw).__name__}")
    if raw.get("v") != RECORD_VERSION:
        raise UnreadableRecord(f"not a session record of version {RECORD_VERSION}")
    try:
        data = _typed(raw, "data", dict)
        try:
            check_json(data, "data")
        except TypeError as exc:
            raise UnreadableRecord(str(exc)) from None
        record = SessionRecord(
            room=_typed(raw, "room", str),
            key=_typed(raw, "key", str),
            state=_typed(raw, "state", str),
            identity=_typed(raw, "identity", str),
            sid=_typed(raw, "sid", str),
            user_id=_optional(raw, "user_id", str),
            data=data,
            reconnects=_count(raw, "reconnects"),
            cleanups=_count(raw, "cleanups"),
            connected_at=_time(raw, "connected_at"),
            disconnected_at=_optional_time(raw, "disconnected_at"),
            grace_deadline=_optional_time(raw, "grace_deadline"),
            history=tuple(_history(_typed(raw, "history", list))),
            owner=_typed(raw, "owner", str),
            updated_at=_time(raw, "updated_at"),
            conversation=_conversation(raw.get("conversation")),
        )
    except KeyError as exc:
        raise UnreadableRecord(f"no field {exc}") from None
    if record.state not in STATES:
        raise UnreadableRecord(f"unknown state {_short(record.state)}")
    _check_place(record, room, key)
    return record


def _check_place(record: SessionRecord, room: str | None, key: str | None) -> None:
    if room is not None and record.room != room:
        raise UnreadableRecord(f"names room {_short(record.room)}, read under {_short(room)}")
    if key is not None and record.key != key:
        raise UnreadableRecord(f"names key {_short(record.key)}, read under {_short(key)}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{_short(text)} is out of a float's range")
    return value


def _short(value: object, limit: int = 80) -> str:
    text = value if isinstance(value, str) else str(value)
    text = repr(text) if isinstance(value, str) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _typed(raw: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = raw[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise UnreadableRecord(f"field {name!r} is a {type(value).__name__}: {_short(repr(value))}")
    return value


def _optional(raw: dict[str, Any], name: str, kind: type) -> Any:
    value = raw.get(name)
    return None if value is None else _typed(raw, name, kind)


def _count(raw: dict[str, Any], name: str) -> int:
    value: int = _typed(raw, name, int)
    if not 0 <= value <= MAX_INT:
        raise UnreadableRecord(f"field {name!r} is {_short(value)}, not within 0..2**63-1")
    return value


def _time(raw: dict[str, Any], name: str) -> float:
    value = _typed(raw, name, (int, float))
    # A NaN fails the comparison too; an int may be too big for a float.
    if not 0 <= value <= MAX_TIME:
        reason = f"field {name!r} is {_short(value)}, not a time within 0..{MAX_TIME:.0f}"
        raise UnreadableRecord(reason)
    return float(value)


def _optional_time(raw: dict[str, Any], name: str) -> float | None:
    return None if raw.get(name) is None else _time(raw, name)


def _conversation(value: Any) -> dict[str, Any] | None:
    # The agent's conversation rides along: one that is not JSON is dropped, never the
    # session (the job restoring it logs what livekit-agents cannot read).
    if not isinstance(value, dict):
        return None
    try:
        check_json(value, "conversation")
    except TypeError:
        return None
    return value


def _history(entries: list[Any]) -> list[dict[str, Any]]:
    # History is for reading: an entry that is not a transition's dict is dropped (the
    # session's restore skips what Transition.from_dict refuses), never the record.
    kept = []
    for entry in entries:
        if type(entry) is not dict:
            continue
        for value in entry.values():  # inline: this loop is most of a restore's checking
            kind = type(value)
            if kind is str or (kind in _NUMBER and -MAX_TIME <= value <= MAX_TIME):
                continue  # a number is a time: NaN, infinities and huge ints fail
            break
        else:
            kept.append(entry)
    return kept


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while records are decoded (nests: the outermost
    pause resumes it, if it was on), and what was decoded put straight among the
    oldest objects.

    Every record decoded survives, so each collection the allocations trigger
    re-examines the records decoded so far, and a big read triggers full
    collections of the whole heap: 40 % of a 10,000-session restore went there.
    Records hold no cycles. The pause lasts one room's decoding (~50 ms for
    10,000 sessions), or one ``RedisStore.load_many`` or ``fleet_snapshot`` (the
    fleet view: 0.7-0.8 s for 100,000 sessions, during which other tasks
    run uncollected).

    On resuming, everything allocated during the pause would be the youngest
    generation, examined whole by the first collection after it: 0.15-0.7 s for
    a fleet view of 100,000 sessions (a full collection, every third or so).
    ``gc.freeze()`` then ``gc.unfreeze()`` moves every tracked object into the
    oldest generation instead, without examining any: records are freed by their
    reference counts, and garbage cycles made meanwhile wait for the next full
    collection. Not when the application has frozen objects itself (a server
    that forks, say): unfreezing would undo that.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()
