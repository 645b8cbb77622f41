"""The fleet view: every room's sessions in a store, across every process writing to it."""

from __future__ import annotations

import operator
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from ._json import check_json
from ._protocol import SessionStore
from ._record import (
    FIELD_ORDER,
    MAX_RECORD_BYTES,
    SessionRecord,
    collector_paused,
    decode_record,
    fast_fields,
    parse_record,
)
from ._redis import RedisStore

__all__ = ["fleet_snapshot"]

_KEY = operator.itemgetter(0)
"""Entries sort by key alone (two fields of a hash may unquote to one key: the last wins)."""
_STORED = (*FIELD_ORDER[:-1], "v")
"""A stored record's keys, in the order the writer puts them (no conversation)."""


async def fleet_snapshot(store: SessionStore, *, room: str | None = None) -> dict[str, Any]:
    """Every record in ``store`` (or only ``room``'s) as plain JSON-ready data.

    Reads the rooms index, then each room's records in pipelined reads: the cost
    follows the rooms and sessions there are, never the rest of the database.
    With ``room``, reads that one room only.

    Returns ``{"taken_at": t, "rooms": {room: {key: record}}}``, rooms and
    keys sorted, each record :meth:`SessionRecord.as_dict` plus
    ``grace_remaining`` (seconds left in the window, ``None`` outside
    ``grace``). :meth:`LifecycleManager.snapshot` stays the single-room,
    single-process view; this one is what the store holds, so it lags each
    manager by its write-behind (normally milliseconds).
    """
    now = time.time()
    names = [room] if room is not None else [name for name, _ in await store.rooms()]
    found = await room_entries(store, names, now)
    return {"taken_at": now, "rooms": {name: found[name] for name in sorted(found) if found[name]}}


async def room_entries(
    store: SessionStore, rooms: Sequence[str], now: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each of ``rooms`` (an empty dict for a room without records): its entries by key,
    sorted, as :func:`session_entry` makes them at ``now`` (the fleet view, and the
    inspector's store source, which re-reads the rooms that changed)."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    with collector_paused():  # ~0.7 s for 100,000 sessions: see collector_paused
        if isinstance(store, RedisStore):
            reader = _RoomReader(store, now)
            for name, entries in (await store._read_rooms(rooms, reader.entries)).items():
                result[name] = dict(sorted(entries, key=_KEY))
        else:
            for name, records in (await store.load_many(rooms)).items():
                found = ((r.key, session_entry(r, now)) for r in records)
                result[name] = dict(sorted(found, key=_KEY))
    return result


def session_entry(record: SessionRecord, now: float) -> dict[str, Any]:
    """``record`` as the fleet view shows it: :meth:`SessionRecord.as_dict` plus
    ``grace_remaining``."""
    entry = record.as_dict()
    entry["grace_remaining"] = _remaining(record.grace_deadline, now)
    return entry


class _RoomReader:
    """A room's ``HGETALL`` straight to its fleet entries: one decoding call for the room.

    A room's record texts (and their history lines) are joined into one JSON array,
    each followed by a separator string drawn at random for this snapshot, and
    decoded and checked by one msgspec call (``_fleet_schema``: what
    :func:`fast_fields` tests, in C). Every separator found at its place at the
    array's top level proves each text between two of them is exactly one JSON value
    on its own (no stored text can hold a separator, so a text cut short or spilling
    into its neighbour shifts or swallows one): the array is then what decoding each
    text alone gives. Each record becomes its entry in place (no ``SessionRecord``,
    no copy). A room whose array fails, and a record the checks cannot take whole
    (another room or key, a conversation, ``data`` no store writes), go the way of
    :func:`parse_record`, record by record, so a corrupt record is skipped with its
    reason (``store.record_skipped``) and never costs the others.
    """

    def __init__(self, store: RedisStore, now: float) -> None:
        self._store = store
        self._now = now
        self._nonce = secrets.token_hex(16)
        self._sep = f',"{self._nonce}",'.encode()
        self._decode: Callable[[bytes], Any] | None = None
        self._refusals: tuple[type[Exception], ...] = ()
        try:
            import msgspec

            from ._fleet_schema import ROOM_DECODER
        except ImportError:  # msgspec (the redis extra) not installed: record by record
            pass
        else:
            self._decode = ROOM_DECODER.decode
            self._refusals = (msgspec.MsgspecError, RecursionError)

    def entries(self, room: str, fields: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
        """``(key, entry)`` of each readable record in ``fields`` (a room's hash)."""
        if self._decode is None:
            return self._one_by_one(room, fields)
        if not fields or type(next(iter(fields))) is not bytes:
            return self._one_by_one(room, fields)  # none, or a client decoding replies itself
        names: list[bytes] = []
        parts: list[bytes] = [b"["]
        add = parts.extend
        sep = self._sep
        for name, text in fields.items():
            if not name.startswith(b"s:"):
                continue
            names.append(name)
            history = fields.get(b"h:" + name[2:])
            if history:
                # The lines as with_history joins them: the later "history" wins.
                add((text, sep, b"[" + history.replace(b"\n", b",") + b"]", sep))
            else:
                add((text, sep, b"null", sep))  # the record's own "history" stands
        if not names:
            return []
        parts[-1] = b"]"
        try:
            joined = b"".join(parts)
        except TypeError:  # a value that is not bytes: not what HGETALL gives
            return self._one_by_one(room, fields)
        if len(joined) > MAX_RECORD_BYTES and any(
            len(fields[name]) + len(fields.get(b"h:" + name[2:]) or b"") > MAX_RECORD_BYTES
            for name in names
        ):
            return self._one_by_one(room, fields)
        try:
            values = self._decode(joined)
        except self._refusals:
            return self._one_by_one(room, fields)  # one record (or more) says why
        count = len(names)
        if len(values) != 4 * count - 1 or values[1::2] != [self._nonce] * (2 * count - 1):
            return self._one_by_one(room, fields)
        found: list[tuple[str, dict[str, Any]]] = []
        refused: dict[Any, Any] = {}
        now = self._now
        for index, name in enumerate(names):
            raw = values[4 * index]
            quoted = name[2:].decode(errors="replace")
            key = unquote(quoted) if "%" in quoted else quoted
            # A dict here is a record that passed the schema: what is left is where
            # it says it belongs, its fields in as_dict's order, and its data.
            if (
                type(raw) is dict
                and raw["room"] == room
                and raw["key"] == key
                and tuple(raw) == _STORED
                and (not raw["data"] or _is_json(raw["data"]))
            ):
                history = values[4 * index + 2]
                if history is not None:
                    raw["history"] = history
                del raw["v"]
                deadline = raw["grace_deadline"]
                raw["grace_remaining"] = (
                    None if deadline is None else round(max(deadline - now, 0), 3)
                )
                found.append((key, raw))
            else:
                refused[name] = fields[name]
                if (line := fields.get(b"h:" + name[2:])) is not None:
                    refused[b"h:" + name[2:]] = line
        if refused:
            found += self._one_by_one(room, refused)
        return found

    def _one_by_one(self, room: str, fields: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Record by record, through :func:`parse_record`'s checks (and its log line)."""
        return self._store._parse_fields(room, fields, None, self._entry)

    def _entry(self, text: bytes, room: str, key: str) -> tuple[str, dict[str, Any]]:
        values = fast_fields(decode_record(text))
        if values is None or values[0] != room or values[1] != key:
            record = parse_record(text, room=room, key=key)  # raises with the reason
            return key, session_entry(record, self._now)
        entry = dict(zip(FIELD_ORDER, values, strict=True))  # SessionRecord.as_dict's order
        if entry["conversation"] is None:
            del entry["conversation"]  # as as_dict: no key for the sessions without one
        entry["grace_remaining"] = _remaining(entry["grace_deadline"], self._now)
        return key, entry


def _is_json(data: dict[str, Any]) -> bool:
    try:
        check_json(data, "data")
    except TypeError:
        return False
    return True


def _remaining(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else round(max(deadline - now, 0), 3)
