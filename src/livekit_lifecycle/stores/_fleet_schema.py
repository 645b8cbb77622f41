"""What the fleet view's decoder checks in C (msgspec): a stored record, as a manager writes it.

The same tests as :func:`~livekit_lifecycle.stores._record.fast_fields`, declared:
msgspec decodes and checks a whole room in one call, ~2 µs a record against ~4 for
orjson's decoding followed by the checks in Python. What fails them is not refused
here: :class:`~livekit_lifecycle.stores._fleet._RoomReader` sends it to
:func:`~livekit_lifecycle.stores._record.parse_record`, which says why.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

import msgspec

from ._json import MAX_INT
from ._record import MAX_TIME

__all__ = ["ROOM_DECODER", "State"]

_Time = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIME)]
"""A wall-clock time (an int is read as its float, as parse_record does)."""
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
_Moment = (
    str
    | Annotated[int, msgspec.Meta(ge=-round(MAX_TIME), le=round(MAX_TIME))]
    | Annotated[float, msgspec.Meta(ge=-MAX_TIME, le=MAX_TIME)]
)
"""A history entry's value, as ``_history`` keeps it: a str or a time-sized number."""
State = Literal[
    "connecting", "active", "disconnecting", "cleaned", "grace", "reconnected", "removed"
]
"""``STATES`` (tests/stores/test_redis_layout.py checks they are the same)."""


class _Stored(TypedDict):
    room: str
    key: str
    state: State
    identity: str
    sid: str
    user_id: str | None
    data: dict[str, Any]
    reconnects: _Count
    cleanups: _Count
    connected_at: _Time
    disconnected_at: _Time | None
    grace_deadline: _Time | None
    history: list[dict[str, _Moment]]
    owner: str
    updated_at: _Time
    v: Literal[1]


class _StoredWith(_Stored, total=False):
    # Declared so that msgspec keeps it (it drops what it does not know): a record
    # with a conversation is checked by parse_record (one session per job).
    conversation: Any


ROOM_DECODER = msgspec.json.Decoder(list[_StoredWith | list[dict[str, _Moment]] | str | None])
"""A room's array (see ``_RoomReader``): records, separators, history lines, nulls."""
