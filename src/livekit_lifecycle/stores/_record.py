""":class:`SessionRecord`: what a store keeps of one session."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ._json import check_json

__all__ = ["RECORD_VERSION", "SessionRecord", "record_ttl"]

RECORD_VERSION = 1

_STATES = frozenset(
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

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the one :meth:`to_json` writes, less the version)."""
        return {
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

    def to_json(self) -> str:
        """The stored form.

        Raises:
            TypeError: when ``data`` holds something JSON cannot represent
                (possible only through in-place mutation of a nested value).
        """
        check_json(self.data, "session data")
        fields = self.as_dict()
        fields["v"] = RECORD_VERSION
        return json.dumps(fields, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionRecord:
        """Parse a stored record.

        Raises:
            ValueError: for anything that is not a record this version wrote.
        """
        try:
            raw = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a session record: {exc}") from None
        if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
            raise ValueError("not a session record of version 1")
        try:
            record = cls(
                room=_typed(raw, "room", str),
                key=_typed(raw, "key", str),
                state=_typed(raw, "state", str),
                identity=_typed(raw, "identity", str),
                sid=_typed(raw, "sid", str),
                user_id=_optional(raw, "user_id", str),
                data=_typed(raw, "data", dict),
                reconnects=_typed(raw, "reconnects", int),
                cleanups=_typed(raw, "cleanups", int),
                connected_at=float(_typed(raw, "connected_at", (int, float))),
                disconnected_at=_optional_time(raw, "disconnected_at"),
                grace_deadline=_optional_time(raw, "grace_deadline"),
                history=tuple(h for h in _typed(raw, "history", list) if isinstance(h, dict)),
                owner=_typed(raw, "owner", str),
                updated_at=float(_typed(raw, "updated_at", (int, float))),
            )
        except KeyError as exc:
            raise ValueError(f"session record without {exc}") from None
        if record.state not in _STATES:
            raise ValueError(f"session record with unknown state {record.state!r}")
        return record

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


def _typed(raw: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = raw[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"session record field {name!r} has the wrong type: {value!r}")
    return value


def _optional(raw: dict[str, Any], name: str, kind: type) -> Any:
    value = raw.get(name)
    return None if value is None else _typed(raw, name, kind)


def _optional_time(raw: dict[str, Any], name: str) -> float | None:
    value = raw.get(name)
    return None if value is None else float(_typed(raw, name, (int, float)))
