"""Per record, never per room: corrupt records written straight into a real redis-server.

Each bad record is skipped with one ``store.record_skipped`` line naming its Redis key and
why, counted in ``stats["store_records_skipped"]``; the room's good records are restored and
the store is not taken for down. A session whose record cannot be written is refused alone.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import sys
import time
from typing import Any
from urllib.parse import quote

import pytest

from livekit_lifecycle import LifecycleConfig, State
from livekit_lifecycle._view import InternalView
from livekit_lifecycle.stores import (
    MemoryStore,
    RedisStore,
    SessionRecord,
    UnreadableRecord,
    fleet_snapshot,
    parse_record,
)
from livekit_lifecycle.stores._fleet import session_entry
from livekit_lifecycle.testing import RoomDriver

from .test_manager_store import ROOM, Fleet, settled, until
from .test_manager_store import fleet as fleet  # the fixture


def fields(key: str, **changes: Any) -> dict[str, Any]:
    """A record's stored fields (JSON-ready), as a manager writes them, with ``changes``."""
    now = time.time()
    record = SessionRecord(
        room=ROOM,
        key=key,
        state="grace",
        identity=key,
        sid=f"PA_{key}",
        user_id=f"u-{key}",
        data={"n": 1},
        connected_at=now - 10,
        disconnected_at=now - 1,
        grace_deadline=now + 20,
        cleanups=1,
        history=tuple(
            {"source": a, "dest": b, "trigger": t, "sid": f"PA_{key}", "at": now - 1}
            for a, b, t in [
                ("connecting", "active", "activate"),
                ("active", "disconnecting", "disconnect"),
                ("disconnecting", "cleaned", "cleanup_done"),
                ("cleaned", "grace", "hold"),
            ]
        ),
        owner="host:1:dead",
    )
    return {**record.as_dict(), "v": 1, **changes}


def redis_key(store: RedisStore, room: str, key: str) -> str:
    """Where the store keeps ``(room, key)``, as its log names it: the room's hash and
    the record's field. The one place these tests know the layout (with put_raw, get_raw)."""
    return f"{store.namespace}:{{{quote(room, safe='')}}} s:{quote(key, safe='')}"


async def put_raw(store: RedisStore, key: str, text: str, room: str = ROOM) -> str:
    name = redis_key(store, room, key)
    room_hash, field = name.split(" ")
    await store.client.hset(room_hash, field, text.encode(errors="surrogateescape"))
    await store.client.hincrby(room_hash, "n", 1)
    await store.client.expire(room_hash, 600)
    return name


async def get_raw(store: RedisStore, name: str) -> Any:
    room_hash, field = name.split(" ")
    return await store.client.hget(room_hash, field)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CORRUPT: dict[str, tuple[str, str]] = {
    # key: (stored text, what the reason says)
    "not-json": ("{not json", "not JSON"),
    "a-list": ("[1, 2]", "not a session record"),
    "old-version": (json.dumps({**fields("old-version"), "v": 0}), "version"),
    "huge-float": (json.dumps(fields("huge-float")).replace('"n": 1', '"n": 1e400'), "range"),
    "nan": (json.dumps(fields("nan"), allow_nan=True).replace('"n": 1', '"n": NaN'), "NaN"),
    "inf-deadline": (
        json.dumps(fields("inf-deadline", grace_deadline=1.0)).replace(
            '"grace_deadline": 1.0', '"grace_deadline": Infinity'
        ),
        "Infinity",
    ),
    "huge-int-deadline": (json.dumps(fields("huge-int-deadline", grace_deadline=10**400)), "time"),
    "far-deadline": (json.dumps(fields("far-deadline", grace_deadline=1e300)), "time"),
    "negative-count": (json.dumps(fields("negative-count", cleanups=-1)), "cleanups"),
    "huge-count": (json.dumps(fields("huge-count", reconnects=10**30)), "reconnects"),
    "digits": (json.dumps(fields("digits")).replace('"n": 1', '"n": ' + "9" * 5000), "not JSON"),
    "deep-parse": (
        json.dumps(fields("deep-parse")).replace('"n": 1', '"n": ' + nested(100_000)),
        "nested",
    ),
    "deep-data": (
        json.dumps(fields("deep-data")).replace('"n": 1', '"n": ' + nested(100)),
        "deeper than 64",
    ),
    "wrong-type": (json.dumps(fields("wrong-type", state=3)), "'state' is a int"),
    "bool-count": (json.dumps(fields("bool-count", cleanups=True)), "'cleanups' is a bool"),
    "no-sid": (json.dumps({k: v for k, v in fields("no-sid").items() if k != "sid"}), "sid"),
    "bad-state": (json.dumps(fields("bad-state", state="elsewhere")), "unknown state"),
    "other-key": (json.dumps(fields("alice")), "names key 'alice', read under 'other-key'"),
    "other-room": (json.dumps(fields("other-room", room="lobby")), "names room 'lobby'"),
    "bad-utf8": ("\udcff", "not JSON"),
}


@pytest.mark.parametrize("key", sorted(CORRUPT))
def test_parse_record_refuses_with_a_reason(key: str) -> None:
    text, says = CORRUPT[key]
    with pytest.raises(UnreadableRecord) as refused:
        parse_record(text.encode(errors="surrogateescape"), room=ROOM, key=key)
    assert says in refused.value.reason
    assert len(refused.value.reason) < 200  # one line, not the record


def test_parse_record_takes_what_a_manager_writes() -> None:
    record = parse_record(json.dumps(fields("alice")), room=ROOM, key="alice")
    assert (record.key, record.user_id, record.data) == ("alice", "u-alice", {"n": 1})
    # History entries that are not transitions are dropped, not the record.
    junk = fields("alice", history=[1, {"at": [1]}, {"at": 10**30}, {"source": "active"}])
    assert parse_record(json.dumps(junk)).history == ({"source": "active"},)


@pytest.mark.redis
async def test_a_room_with_corrupt_records_restores_every_good_one(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "livekit_lifecycle")
    store = fleet.store()
    names = {}
    for key, (text, _) in CORRUPT.items():
        names[key] = await put_raw(store, key, text)
    for key in ("alice", "bob"):
        await put_raw(store, key, json.dumps(fields(key)))
    # A record of this room under another room's key is not this room's business.
    await put_raw(store, "carol", json.dumps(fields("carol")), room="lobby")

    async with RoomDriver(ROOM) as driver:
        manager = fleet.manager(driver.room, store=store)
        await until(lambda: manager.stats["sessions_restored"] == 2, "the restore")
        await manager.idle()
        assert {k: s.state for k, s in manager.sessions.items()} == {
            "alice": State.GRACE,
            "bob": State.GRACE,
        }
        alice = manager.get("alice")
        assert alice is not None and alice.user_id == "u-alice" and alice.data == {"n": 1}
        assert manager.stats["store_records_skipped"] == len(CORRUPT)
        assert manager.stats["store_outages"] == 0 and manager.stats["internal_errors"] == 0
        skipped = [r for r in caplog.records if "store.record_skipped" in r.getMessage()]
        assert len(skipped) == len(CORRUPT)
        by_key = {r.__dict__["redis_key"]: r.__dict__["reason"] for r in skipped}
        for key, (_, says) in CORRUPT.items():
            assert says in by_key[names[key]], (key, by_key[names[key]])
        assert not any(
            r.levelno >= logging.ERROR for r in caplog.records if r.name.startswith("livekit")
        )
        # The corrupt records are left as they are (for a human to look at), never rewritten.
        await settled(manager)
        assert await get_raw(store, names["not-json"]) == b"{not json"
        await manager.aclose()


def skipped_reasons(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Each ``store.record_skipped`` line's reason, by the Redis key it names (one line each)."""
    skipped = [r for r in caplog.records if "store.record_skipped" in r.getMessage()]
    by_key = {r.__dict__["redis_key"]: r.__dict__["reason"] for r in skipped}
    assert len(by_key) == len(skipped)
    return by_key


@pytest.mark.redis
async def test_the_fleet_view_shows_every_good_record_and_names_each_corrupt_one(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    # fleet_snapshot decodes a room in one call: a corrupt record sends that room
    # record by record, and still costs nothing but its own line.
    caplog.set_level(logging.INFO, "livekit_lifecycle")
    store = fleet.store()
    names = {key: await put_raw(store, key, text) for key, (text, _) in CORRUPT.items()}
    # In another room, records that decode and pass the schema, but not where they are.
    clean = "clean-room"
    for key in ("alice", "bob"):
        await put_raw(store, key, json.dumps(fields(key)))
        await put_raw(store, key, json.dumps(fields(key, room=clean)), room=clean)
    names["elsewhere"] = await put_raw(
        store, "elsewhere", json.dumps(fields("carol", room=clean)), room=clean
    )
    names["lobby"] = await put_raw(
        store, "lobby", json.dumps(fields("lobby", room="lobby")), room=clean
    )
    loaded = {room: await store.load(room) for room in (ROOM, clean)}
    caplog.clear()

    snapshot = await fleet_snapshot(store, room=ROOM)
    assert snapshot["rooms"] == {
        ROOM: {r.key: session_entry(r, snapshot["taken_at"]) for r in loaded[ROOM]}
    }
    assert list(snapshot["rooms"][ROOM]) == ["alice", "bob"]
    other = await fleet_snapshot(store, room=clean)
    assert other["rooms"][clean] == {
        r.key: session_entry(r, other["taken_at"]) for r in loaded[clean]
    }
    assert list(other["rooms"][clean]) == ["alice", "bob"]

    by_key = skipped_reasons(caplog)
    assert len(by_key) == len(CORRUPT) + 2
    for key, (_, says) in CORRUPT.items():
        assert says in by_key[names[key]], (key, by_key[names[key]])
    assert "names key 'carol'" in by_key[names["elsewhere"]]
    assert "names room 'lobby'" in by_key[names["lobby"]]


def room_fields(texts: dict[str, str]) -> dict[bytes, bytes]:
    """A room hash as ``HGETALL`` returns it, fields in this order."""
    return {f"s:{key}".encode(): text.encode() for key, text in texts.items()}


@pytest.mark.redis
async def test_texts_that_decode_only_together_are_each_refused(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    # A room's texts are decoded joined: "split-a" is cut short and "split-b" ends it,
    # "split-c" adds the elements that would put the others back in step. Each text
    # alone is not JSON, and each is refused so, whatever they make together.
    from livekit_lifecycle.stores._fleet import _RoomReader

    caplog.set_level(logging.INFO, "livekit_lifecycle")
    store = fleet.store()
    texts = {
        "split-a": json.dumps(fields("split-a"))[:-1] + ', "x": [1',
        "split-b": "2]}",
        "split-c": "null, null, null, null, " + json.dumps(fields("split-c")),
        "alice": json.dumps(fields("alice")),
    }
    for key in ("split-a", "split-b", "split-c"):
        with pytest.raises(UnreadableRecord):
            parse_record(texts[key], room=ROOM, key=key)
    found = _RoomReader(store, time.time()).entries(ROOM, room_fields(texts))
    assert [key for key, _ in found] == ["alice"]
    by_key = skipped_reasons(caplog)
    assert sorted(by_key) == sorted(redis_key(store, ROOM, k) for k in texts if k != "alice")
    assert all("not JSON" in reason for reason in by_key.values())


@pytest.mark.redis
async def test_without_msgspec_the_fleet_view_reads_record_by_record(
    fleet: Fleet, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msgspec comes with the redis extra; a RedisStore installed without it still
    # shows the fleet, through parse_record's checks.
    caplog.set_level(logging.INFO, "livekit_lifecycle")
    store = fleet.store()
    names = {key: await put_raw(store, key, CORRUPT[key][0]) for key in ("not-json", "other-key")}
    for key in ("alice", "bob"):
        await put_raw(store, key, json.dumps(fields(key)))
    loaded = await store.load(ROOM)
    caplog.clear()
    monkeypatch.setitem(sys.modules, "livekit_lifecycle.stores._fleet_schema", None)
    snapshot = await fleet_snapshot(store, room=ROOM)
    assert snapshot["rooms"][ROOM] == {
        r.key: session_entry(r, snapshot["taken_at"]) for r in loaded
    }
    assert sorted(skipped_reasons(caplog)) == sorted(names.values())


def test_the_fleet_schema_knows_every_state() -> None:
    from typing import get_args

    from livekit_lifecycle.stores._fleet_schema import State as Stored
    from livekit_lifecycle.stores._record import STATES

    assert set(get_args(Stored)) == STATES == {state.value for state in State}


def test_pausing_the_collector_keeps_the_applications_frozen_objects_frozen() -> None:
    from livekit_lifecycle.stores._record import collector_paused

    kept = [{"a": [1]} for _ in range(10)]
    gc.freeze()  # what a server that forks does, to share its heap with its children
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with collector_paused():
            decoded = [{"b": [2]} for _ in range(10)]
        assert gc.isenabled()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
    with collector_paused():
        decoded += [{"c": [3]} for _ in range(10)]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert len(kept) == 10 and len(decoded) == 20


@pytest.mark.redis
async def test_a_deadline_far_ahead_is_capped_at_the_grace_period(fleet: Fleet) -> None:
    store = fleet.store()
    far = fields("alice", grace_deadline=time.time() + 1e8)  # within MAX_TIME: parsed
    await put_raw(store, "alice", json.dumps(far))
    async with RoomDriver(ROOM) as driver:
        manager = fleet.manager(driver.room, store=store, grace_period=0.5)
        await until(lambda: manager.stats["sessions_restored"] == 1, "the restore")
        session = manager.get("alice")
        assert session is not None
        (timer,) = InternalView(manager).timers(session)
        loop = asyncio.get_running_loop()
        assert timer.when() - loop.time() <= 0.5
        await until(lambda: manager.get("alice") is None, "alice's removal", timeout=5)
        await manager.aclose()


@pytest.mark.redis
async def test_a_sid_claimed_by_two_records_restores_one(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "livekit_lifecycle")
    store = fleet.store()
    await put_raw(store, "alice", json.dumps(fields("alice", sid="PA_same")))
    await put_raw(store, "bob", json.dumps(fields("bob", sid="PA_same")))
    async with RoomDriver(ROOM) as driver:
        manager = fleet.manager(driver.room, store=store)
        await until(lambda: manager.stats["store_records_skipped"] == 1, "the restore")
        await manager.idle()
        assert list(manager.sessions) == ["alice"]
        await manager.aclose()


@pytest.mark.redis
async def test_one_unwritable_session_never_blocks_the_others(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "livekit_lifecycle")
    async with RoomDriver(ROOM) as driver:
        manager = fleet.manager(driver.room)
        await manager.idle()
        driver.connect("alice", active=True)
        driver.connect("bob", active=True)
        alice, bob = manager.get("alice"), manager.get("bob")
        assert alice is not None and bob is not None
        alice.data["log"] = []
        await settled(manager)
        for bad in (object(), 10**5000, math.nan):
            alice.data["log"].append(bad)  # in place: not seen at assignment
            bob.data["n"] = bob.data.get("n", 0) + 1
            manager.set_user_id("alice", f"u-{bob.data['n']}")
            await settled(manager)
            stored = await fleet.stored()
            assert stored["bob"].data == {"n": bob.data["n"]}
            assert stored["alice"].data == {"log": []} and stored["alice"].user_id is None
            alice.data["log"].pop()
        assert manager.stats["store_unserialisable"] == 3
        assert manager.stats["store_outages"] == 0
        refused = [r for r in caplog.records if "store.unserialisable" in r.getMessage()]
        assert [r.__dict__["key"] for r in refused] == ["alice"] * 3
        alice.data["fixed"] = True  # the session's next change writes it whole
        await settled(manager)
        assert (await fleet.stored())["alice"].user_id == "u-3"
        await manager.aclose()


def test_data_the_store_cannot_write_is_refused_at_assignment() -> None:
    from livekit_lifecycle.stores import SessionData

    data = SessionData()
    with pytest.raises(TypeError, match="2\\*\\*63"):
        data["id"] = 2**64
    data["id"] = 2**63 - 1
    with pytest.raises(TypeError, match="deeper than 64"):
        data["deep"] = json.loads(nested(70))


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"grace_period": 1e308}, "grace_period"),
        ({"grace_period": 10**400}, "grace_period"),
        ({"cleanup_timeout": math.inf}, "cleanup_timeout"),
        ({"shutdown_timeout": 2e9}, "shutdown_timeout"),
        ({"history_limit": 10**100}, "history_limit"),
        ({"history_limit": 0}, "history_limit"),
    ],
)
def test_absurd_configuration_numbers_are_a_valueerror_naming_the_field(
    config: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        LifecycleConfig(**config)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"claim_ttl": math.inf}, "claim_ttl"),
        ({"claim_ttl": 1e300}, "claim_ttl"),
        ({"ttl_margin": math.nan}, "ttl_margin"),
        ({"ttl_margin": -1}, "ttl_margin"),
        ({"timeout": 1e300}, "timeout"),
        ({"timeout": "2"}, "timeout"),
    ],
)
def test_absurd_store_numbers_are_a_valueerror_naming_the_field(
    options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        RedisStore.from_url("redis://127.0.0.1:1/0", **options)
    with pytest.raises(ValueError, match="ttl_margin"):
        MemoryStore(ttl_margin=math.inf)


@pytest.mark.redis
async def test_the_longest_grace_window_is_a_ttl_redis_takes(fleet: Fleet) -> None:
    async with RoomDriver(ROOM) as driver:
        manager = fleet.manager(driver.room, grace_period=1e9)
        await manager.idle()
        driver.connect("alice", active=True)
        driver.disconnect("alice")
        await settled(manager)
        assert manager.stats["store_errors"] == 0
        assert (await fleet.stored())["alice"].state == "grace"
        name = redis_key(fleet.stores[0], ROOM, "alice")
        assert await fleet.stores[0].client.ttl(name.split(" ")[0]) > 1e9
        await manager.aclose()
