"""What a store can hold: SessionData's checks at assignment, and the record's JSON form."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from livekit_lifecycle.stores import SessionData, SessionRecord, record_ttl


@pytest.mark.parametrize(
    "value",
    [None, True, 3, 2.5, "x", [1, "a", None], (1, 2), {"a": {"b": [1.5, {"c": None}]}}],
)
def test_json_values_are_accepted(value: Any) -> None:
    data = SessionData()
    data["v"] = value
    assert data["v"] == value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (object(), "object"),
        ({1, 2}, "set"),
        (b"raw", "bytes"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        ({1: "int key"}, "key 1"),
        ([1, {"deep": object()}], "['deep']"),
    ],
)
def test_unserialisable_values_raise_typeerror_at_assignment(value: Any, says: str) -> None:
    data = SessionData(kept=1)
    with pytest.raises(TypeError, match="session data") as raised:
        data["bad"] = value
    assert says in str(raised.value)
    assert data == {"kept": 1}


def test_every_way_of_assigning_is_checked_and_all_or_nothing() -> None:
    data = SessionData()
    with pytest.raises(TypeError):
        data.update({"ok": 1, "bad": object()})
    with pytest.raises(TypeError):
        data.update([("ok", 1), ("bad", object())])
    with pytest.raises(TypeError):
        data.update(ok=1, bad=object())
    with pytest.raises(TypeError):
        data |= {"bad": object()}
    with pytest.raises(TypeError):
        data.setdefault("bad", object())
    with pytest.raises(TypeError, match="keys must be str"):
        data[3] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        SessionData({"bad": object()})
    assert data == {}
    data.update({"a": 1}, b=2)
    data |= {"c": 3}
    assert data.setdefault("a", object()) == 1  # present: the default is not stored
    assert data == {"a": 1, "b": 2, "c": 3}
    assert isinstance(data, dict) and json.loads(json.dumps(data)) == data


def record(**changes: Any) -> SessionRecord:
    fields: dict[str, Any] = {
        "room": "room:1",
        "key": "user-1",
        "state": "grace",
        "identity": "user-1",
        "sid": "PA_1",
        "user_id": "u1",
        "data": {"cart": [1, 2], "name": "Ana"},
        "reconnects": 2,
        "cleanups": 3,
        "connected_at": 10.0,
        "disconnected_at": 20.0,
        "grace_deadline": 50.0,
        "history": tuple({"source": "a", "dest": "b", "n": n} for n in range(3)),
        "owner": "host:1:abc",
        "updated_at": 21.0,
    }
    fields.update(changes)
    return SessionRecord(**fields)


def test_a_record_round_trips_through_json() -> None:
    original = record()
    assert SessionRecord.from_json(original.to_json()) == original
    assert SessionRecord.from_json(original.to_json().encode()) == original


def test_data_mutated_in_place_is_refused_at_write_not_lost_silently() -> None:
    data = SessionData(log=[])
    data["log"].append(object())  # not checked: an in-place change of a nested list
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        record(data=data).to_json()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"v": 2}',
        json.dumps({**record().as_dict(), "v": 1, "state": "elsewhere"}),
        json.dumps({**record().as_dict(), "v": 1, "cleanups": "3"}),
        json.dumps({k: v for k, v in {**record().as_dict(), "v": 1}.items() if k != "sid"}),
    ],
)
def test_what_is_not_a_record_is_a_valueerror(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the messages vary by cause)
        SessionRecord.from_json(text)


def test_ttl_is_the_remaining_window_plus_the_margin_in_grace() -> None:
    assert record_ttl(record(grace_deadline=50.0), 30.0, 60.0, now=40.0) == 70.0
    assert record_ttl(record(grace_deadline=50.0), 30.0, 60.0, now=90.0) == 60.0
    assert record_ttl(record(grace_deadline=None, state="active"), 30.0, 60.0) == 90.0
