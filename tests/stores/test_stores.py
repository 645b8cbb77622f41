"""The contract every store keeps (MemoryStore, and RedisStore on a real redis-server)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from livekit_lifecycle.stores import (
    MemoryStore,
    RedisStore,
    SessionRecord,
    SessionStore,
    StoreWrite,
    fleet_snapshot,
    open_store,
    process_owner,
)
from livekit_loopback.redis_server import RedisServer


def record(room: str, key: str, **changes: Any) -> SessionRecord:
    fields: dict[str, Any] = {"state": "active", "identity": key, "sid": f"PA_{key}"}
    fields.update(changes)
    return SessionRecord(room=room, key=key, **fields)


async def test_records_are_kept_per_room_and_deleted(any_store: SessionStore) -> None:
    # Names with the separator and glob characters must not leak into each other.
    rooms = ["a", "a:b", "a*", "[a]"]
    await any_store.write(
        [StoreWrite(room, f"k{i}:*", record(room, f"k{i}:*"), 60) for i, room in enumerate(rooms)]
        + [StoreWrite("a", "second", record("a", "second", data={"x": [1]}), 60)]
    )
    loaded = await any_store.load("a")
    assert sorted(r.key for r in loaded) == ["k0:*", "second"]
    assert next(r for r in loaded if r.key == "second").data == {"x": [1]}
    for i, room in enumerate(rooms[1:], start=1):
        assert [r.key for r in await any_store.load(room)] == [f"k{i}:*"]
    await any_store.write([StoreWrite("a", "second", None, 0)])
    assert [r.key for r in await any_store.load("a")] == ["k0:*"]
    assert sorted(r.room for r in [r async for r in any_store.scan()]) == sorted(rooms)


async def test_memory_records_expire_by_their_ttl() -> None:
    store = MemoryStore()
    await store.write(
        [
            StoreWrite("r", "short", record("r", "short"), 0.2),
            StoreWrite("r", "long", record("r", "long"), 60),
        ]
    )
    deadline = time.monotonic() + 10
    while len(await store.load("r")) != 1:
        assert time.monotonic() < deadline, "the short record never expired"
        await asyncio.sleep(0.05)
    assert [r.key for r in await store.load("r")] == ["long"]


async def test_a_claim_is_won_once_and_kept_by_its_winner(any_store: SessionStore) -> None:
    first = await any_store.claim("r", "k", "PA_1", "owner-1")
    assert first.won and first.owner == "owner-1"
    again = await any_store.claim("r", "k", "PA_1", "owner-1")
    assert again.won and again.token == first.token
    lost = await any_store.claim("r", "k", "PA_1", "owner-2")
    assert not lost.won and lost.owner == "owner-1" and lost.token == first.token
    other = await any_store.claim("r", "k", "PA_2", "owner-2")
    assert other.won and other.token > first.token


async def test_claim_many_answers_each_as_claim_would(any_store: SessionStore) -> None:
    mine = await any_store.claim("r", "mine", "PA_m", "owner-1")
    theirs = await any_store.claim("r", "theirs", "PA_t", "owner-2")
    fresh = [(f"k{n}", f"PA_{n}") for n in range(600)]  # more than one script call's worth
    claims = await any_store.claim_many(
        "r", "owner-1", [("mine", "PA_m"), ("theirs", "PA_t"), *fresh]
    )
    assert len(claims) == 602
    assert claims[0].won and claims[0].token == mine.token
    assert not claims[1].won and claims[1].owner == "owner-2" and claims[1].token == theirs.token
    assert all(c.won and c.owner == "owner-1" for c in claims[2:])
    tokens = [c.token for c in claims[2:]]
    assert len(set(tokens)) == 600 and min(tokens) > theirs.token
    assert await any_store.claim_many("r", "owner-1", []) == []
    again = await any_store.claim("r", "k7", "PA_7", "owner-2")
    assert not again.won and again.token == claims[9].token


@pytest.mark.redis
async def test_concurrent_claims_from_separate_clients_have_one_winner(
    redis_server: RedisServer,
) -> None:
    stores = [RedisStore.from_url(redis_server.url, namespace="race") for _ in range(8)]
    try:
        for sid in range(20):
            claims = await asyncio.gather(
                *(s.claim("r", "k", f"PA_{sid}", f"owner-{i}") for i, s in enumerate(stores))
            )
            assert sum(c.won for c in claims) == 1
            assert len({c.owner for c in claims}) == 1
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.redis
async def test_namespaces_do_not_see_each_other(redis_server: RedisServer) -> None:
    one = RedisStore.from_url(redis_server.url, namespace="one")
    two = RedisStore.from_url(redis_server.url, namespace="two")
    try:
        await one.write([StoreWrite("r", "k", record("r", "k"), 60)])
        assert await two.load("r") == []
        assert (await two.claim("r", "k", "PA_k", "x")).won
        assert (await one.claim("r", "k", "PA_k", "y")).won
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.redis
async def test_an_unreadable_record_is_skipped(redis_store: RedisStore) -> None:
    await redis_store.write([StoreWrite("r", "good", record("r", "good"), 60)])
    await redis_store.client.hset(f"{redis_store.namespace}:{{r}}", "s:bad", "{not json")
    await redis_store.client.hset(f"{redis_store.namespace}:{{r}}", "s:other", '{"v":2}')
    assert [r.key for r in await redis_store.load("r")] == ["good"]


@pytest.mark.redis
async def test_a_stopped_server_is_an_exception_not_a_hang(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, timeout=1.0)
    await store.ping()
    await redis_server.kill()
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 (redis-py's ConnectionError family)
            await asyncio.wait_for(store.ping(), 10)
    finally:
        await store.aclose()


async def test_fleet_snapshot_is_plain_sorted_data(any_store: SessionStore) -> None:
    now = time.time()
    await any_store.write(
        [
            StoreWrite("room-b", "u2", record("room-b", "u2"), 60),
            StoreWrite(
                "room-a", "u1", record("room-a", "u1", state="grace", grace_deadline=now + 20), 60
            ),
            StoreWrite("room-a", "u0", record("room-a", "u0", user_id="zero"), 60),
        ]
    )
    snapshot = await fleet_snapshot(any_store)
    assert list(snapshot["rooms"]) == ["room-a", "room-b"]
    assert list(snapshot["rooms"]["room-a"]) == ["u0", "u1"]
    assert snapshot["rooms"]["room-a"]["u0"]["user_id"] == "zero"
    assert 15 < snapshot["rooms"]["room-a"]["u1"]["grace_remaining"] <= 20
    assert snapshot["rooms"]["room-b"]["u2"]["grace_remaining"] is None


def test_open_store_by_url() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    store = open_store("redis://127.0.0.1:1/0", namespace="fleet")
    assert isinstance(store, RedisStore) and store.namespace == "fleet"
    with pytest.raises(ValueError, match="scheme"):
        open_store("http://x")
    with pytest.raises(ValueError, match="namespace"):
        RedisStore.from_url("redis://127.0.0.1:1/0", namespace="a:b")


def test_owners_are_unique_per_call() -> None:
    assert process_owner() != process_owner()


@pytest.mark.redis
async def test_inspect_prints_the_fleet_as_a_table_and_as_json(
    redis_server: RedisServer, redis_store: RedisStore
) -> None:
    await redis_store.write(
        [
            StoreWrite("room-a", "u1", record("room-a", "u1", user_id="one", owner="w1"), 60),
            StoreWrite("room-b", "u2", record("room-b", "u2", owner="w2"), 60),
        ]
    )
    base = [sys.executable, "-m", "livekit_lifecycle", "inspect", "--store", redis_server.url]
    base += ["--namespace", redis_store.namespace]

    def inspect(*more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *more], capture_output=True, text=True, timeout=60)

    table = await asyncio.to_thread(inspect)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ROOM", "KEY", "STATE", "USER_ID"]
    assert lines[1].split()[:4] == ["room-a", "u1", "active", "one"]
    assert lines[2].split()[:3] == ["room-b", "u2", "active"]
    assert lines[-1] == "2 session(s) in 2 room(s)"
    as_json = await asyncio.to_thread(inspect, "--json", "--room", "room-b")
    assert json.loads(as_json.stdout)["rooms"]["room-b"]["u2"]["owner"] == "w2"
    assert list(json.loads(as_json.stdout)["rooms"]) == ["room-b"]


def test_inspect_reports_an_unreachable_store() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "livekit_lifecycle", "inspect", "--store", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "ConnectionError" in result.stderr
