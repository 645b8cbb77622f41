"""RedisStore's layout on a real redis-server: per-room hashes, the lease, the indexes.

What issue 20 asks of it: a live process's records never expire, whatever the room's
activity; the steady cost is per process and room; history is appended; restore
and the fleet view read rooms, not the keyspace; a dead process's rooms are found
(and claimed once); a cleanup claim of a dead process is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from livekit_lifecycle.stores import (
    RedisStore,
    SessionRecord,
    SessionStore,
    StoreWrite,
    fleet_snapshot,
)
from livekit_lifecycle.stores._writer import STORE_STATS, StoreWriter

WAIT = 20.0


def record(room: str, key: str, **changes: Any) -> SessionRecord:
    fields: dict[str, Any] = {"state": "active", "identity": key, "sid": f"PA_{key}"}
    fields.update(changes)
    return SessionRecord(room=room, key=key, **fields)


def history(*numbers: int) -> tuple[dict[str, Any], ...]:
    return tuple({"n": n, "trigger": "t", "at": float(n)} for n in numbers)


async def crash(store: RedisStore) -> None:
    """What SIGKILL leaves of a store's process: no lease refresh, no goodbye."""
    for task in (store._lease_task, store._claiming):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await store.client.aclose()


async def test_a_busy_room_keeps_its_idle_sessions_across_refresh_periods(
    redis_url: str,
) -> None:
    # Retention 0.6 s (grace 0.3 + margin 0.3), lease 0.3 s: 3 s is five retention periods.
    store = RedisStore.from_url(redis_url, namespace="busy", ttl_margin=0.3, lease_ttl=0.3)
    records = {f"idle-{n}": record("r", f"idle-{n}") for n in range(50)}
    records["busy"] = record("r", "busy")
    stats = dict.fromkeys(STORE_STATS, 0)
    writer = StoreWriter(
        store,
        room=lambda: "r",
        render=records.get,
        live_keys=lambda: list(records),
        grace_period=0.3,
        stats=stats,
    )
    writer.start()
    writer.mark_all()
    try:
        assert await writer.flush(WAIT)
        end = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < end:
            n += 1
            records["busy"] = record("r", "busy", reconnects=n)
            writer.mark("busy")
            await asyncio.sleep(0.05)
            assert len(await store.load("r")) == 51, "a live process lost a record"
        assert await writer.flush(WAIT)
        # Idle sessions were written once: the room is kept by the lease loop.
        assert stats["store_writes"] < 51 + n + 5
    finally:
        await writer.aclose(WAIT)
    await crash(store)
    reader = RedisStore.from_url(redis_url, namespace="busy")
    try:
        deadline = time.monotonic() + WAIT
        while await reader.load("r"):
            assert time.monotonic() < deadline, "a dead process's room never expired"
            await asyncio.sleep(0.05)
    finally:
        await reader.aclose()


async def test_history_is_appended_and_capped(any_store: SessionStore) -> None:
    if not any_store.durable:
        pytest.skip("MemoryStore keeps whole records")
    redis_store: Any = any_store
    await redis_store.write([StoreWrite("r", "k", record("r", "k", history=history(1, 2, 3)), 60)])
    await redis_store.write(
        [StoreWrite("r", "k", record("r", "k", history=history(1, 2, 3, 4)), 60, appended=1)]
    )
    (loaded,) = await redis_store.load("r")
    assert [h["n"] for h in loaded.history] == [1, 2, 3, 4]
    # A capped history (limit 4 in memory): the stored one keeps the same last four.
    await redis_store.write(
        [StoreWrite("r", "k", record("r", "k", history=history(3, 4, 5, 6)), 60, appended=2)]
    )
    (loaded,) = await redis_store.load("r")
    assert [h["n"] for h in loaded.history] == [3, 4, 5, 6]
    await redis_store.write([StoreWrite("r", "k", record("r", "k", history=history(9)), 60)])
    (loaded,) = await redis_store.load("r")
    assert [h["n"] for h in loaded.history] == [9]


async def test_every_key_of_a_room_shares_its_hash_tag(redis_url: str) -> None:
    redis_store = RedisStore.from_url(redis_url, namespace="tags")
    room = "a:{b}*"
    await redis_store.write([StoreWrite(room, "k", record(room, "k"), 60)])
    await redis_store.claim(room, "k", "PA_k", "me")
    tag = "{a%3A%7Bb%7D%2A}"
    tagged = [f"tags:{tag}", f"tags:{tag}:token", f"tags:{tag}:claim:k:PA_k"]
    assert await redis_store.client.exists(*tagged) == 3  # one slot: a Cluster answers too
    ((indexed, changed),) = await redis_store.rooms()
    assert indexed == room and abs(changed - time.time()) < 5
    await redis_store.aclose()


@pytest.mark.redis
async def test_restore_and_the_fleet_view_read_rooms_not_the_keyspace(
    redis_store: RedisStore,
) -> None:
    # One node: DEBUG POPULATE (the benchmark builds 10M keys the same way, and measures).
    await redis_store.client.execute_command("DEBUG", "POPULATE", 20000, "unrelated")
    await redis_store.write(
        [
            StoreWrite(f"room-{n % 3}", f"k{n}", record(f"room-{n % 3}", f"k{n}"), 60)
            for n in range(9)
        ]
    )
    before = (await redis_store.client.info("commandstats")).get("cmdstat_scan")
    assert len(await redis_store.load("room-1")) == 3
    one = await fleet_snapshot(redis_store, room="room-2")
    assert list(one["rooms"]) == ["room-2"] and len(one["rooms"]["room-2"]) == 3
    everything = await fleet_snapshot(redis_store)
    assert sum(len(s) for s in everything["rooms"].values()) == 9
    assert (await redis_store.client.info("commandstats")).get("cmdstat_scan") == before
    since = time.time()
    await asyncio.sleep(0.01)
    await redis_store.write([StoreWrite("room-0", "k0", None, 0)])
    await redis_store.write([StoreWrite("room-1", "k1", record("room-1", "k1", reconnects=1), 60)])
    assert [room for room, _ in await redis_store.rooms(since)] == ["room-0", "room-1"]


async def test_a_dead_process_is_found_by_its_lease_and_recovered_once(
    redis_url: str,
) -> None:
    dead = RedisStore.from_url(redis_url, namespace="lease", lease_ttl=0.3)
    alive = RedisStore.from_url(redis_url, namespace="lease", lease_ttl=0.3)
    watchdogs = [RedisStore.from_url(redis_url, namespace="lease") for _ in range(3)]
    try:
        await dead.write([StoreWrite("lost", "k", record("lost", "k"), 60)])
        await alive.write([StoreWrite("kept", "k", record("kept", "k"), 60)])
        info = await alive.read_room("lost")
        assert info.owner == dead.lease and info.owner_alive
        await crash(dead)
        deadline = time.monotonic() + WAIT
        while not (found := await watchdogs[0].dead_rooms()):
            assert time.monotonic() < deadline, "the dead lease was never seen"
            await asyncio.sleep(0.05)
        assert [(r.room, r.owner, [s.key for s in r.records]) for r in found] == [
            ("lost", dead.lease, ["k"])
        ]
        assert not (await alive.read_room("lost")).owner_alive
        assert (await alive.read_room("kept")).owner_alive
        wins = await asyncio.gather(
            *(
                w.claim_recovery("lost", dead.lease, f"watchdog-{i}")
                for i, w in enumerate(watchdogs)
            )
        )
        assert sum(wins) == 1
    finally:
        await alive.aclose()
        for watchdog in watchdogs:
            await watchdog.aclose()


async def test_a_claim_of_a_dead_process_is_taken_over_with_a_higher_token(
    redis_url: str,
) -> None:
    first = RedisStore.from_url(redis_url, namespace="takeover", lease_ttl=0.3)
    second = RedisStore.from_url(redis_url, namespace="takeover", lease_ttl=0.3)
    try:
        # Mid-cleanup when it died: the record still shows the connection before cleanup.
        await first.write([StoreWrite("r", "a", record("r", "a", state="disconnecting"), 60)])
        await first.write([StoreWrite("r", "b", record("r", "b", state="disconnecting"), 60)])
        held = await first.claim("r", "a", "PA_a", "first")
        done = await first.claim("r", "b", "PA_b", "first")
        assert held.won and not held.retry and held.lease == first.lease
        # b's cleanup was done and written (grace) before the crash.
        await first.write([StoreWrite("r", "b", record("r", "b", state="grace"), 60)])
        lost = await second.claim("r", "a", "PA_a", "second")
        assert not lost.won and lost.owner == "first"  # the owner lives: never two owners
        await crash(first)
        deadline = time.monotonic() + WAIT
        while (taken := await second.claim("r", "a", "PA_a", "second")).owner == "first":
            assert time.monotonic() < deadline, "the claim was never taken over"
            await asyncio.sleep(0.05)
        assert taken.won and taken.retry and taken.token > held.token
        assert taken.lease == second.lease
        again = await second.claim("r", "a", "PA_a", "second")
        assert again.won and again.token == taken.token
        kept = await second.claim("r", "b", "PA_b", "second")
        assert not kept.won and kept.owner == "first" and kept.token == done.token
        ttl = await second.client.pttl("takeover:{r}:claim:a:PA_a")
        assert 0 < ttl <= 600_000
    finally:
        await second.aclose()


async def test_claim_many_takes_over_a_dead_process_claim(redis_url: str) -> None:
    first = RedisStore.from_url(redis_url, namespace="takeover-many", lease_ttl=0.3)
    second = RedisStore.from_url(redis_url, namespace="takeover-many", lease_ttl=0.3)
    try:
        await first.write([StoreWrite("r", "a", record("r", "a", state="disconnecting"), 60)])
        held = await first.claim("r", "a", "PA_a", "first")
        lost, fresh = await second.claim_many("r", "second", [("a", "PA_a"), ("c", "PA_c")])
        assert not lost.won and lost.owner == "first"  # the owner lives: never two owners
        assert fresh.won and not fresh.retry
        await crash(first)
        deadline = time.monotonic() + WAIT
        while True:
            taken, kept = await second.claim_many("r", "second", [("a", "PA_a"), ("c", "PA_c")])
            if taken.owner != "first":
                break
            assert time.monotonic() < deadline, "the claim was never taken over"
            await asyncio.sleep(0.05)
        assert taken.won and taken.retry and taken.token > held.token
        assert kept.won and kept.token == fresh.token
    finally:
        await second.aclose()


async def test_claims_of_one_call_keep_their_names_and_owners_apart(redis_url: str) -> None:
    # The claims of one script call travel in one argument: names with spaces, colons,
    # braces and non-ASCII, and owners changing within the call, come back as sent.
    store = RedisStore.from_url(redis_url, namespace="packed")
    try:
        connections = [("a b:{c}", "PA_1"), ("é", "PA ü"), ("plain", "PA_3")]
        await store.write(
            [StoreWrite("r", "é", record("r", "é", state="disconnecting", sid="PA ü"), 60)]
        )
        first = await store.claim_many("r", "one owner", connections)
        assert [c.won for c in first] == [True, True, True]
        assert len({c.token for c in first}) == 3
        mixed = await store.claim_many("r", "another", connections)
        assert [(c.won, c.owner) for c in mixed] == [(False, "one owner")] * 3
        assert [c.token for c in mixed] == [c.token for c in first]
        assert [c.done for c in mixed] == [True, False, True]  # only é's record is live
        for key, sid in connections:
            assert await store.client.exists(store._claim_key("r", key, sid))
        # An owner or sid holding the packing's separators (or its escape) is claimed
        # like any other, alone or beside plain ones, and reads back as it was.
        odd = [("k", "PA\x1f1"), ("k2", "\x1dPA"), ("k3", "PA_3"), ("k4", "PA\x1e\x1e")]
        await store.write(
            [StoreWrite("r", "k", record("r", "k", state="disconnecting", sid="PA\x1f1"), 60)]
        )
        claimed = await store.claim_many("r", "x\x1ey", odd)
        assert [c.won for c in claimed] == [True] * 4
        assert all(c.owner == "x\x1ey" for c in claimed)
        again = await store.claim_many("r", "plain", odd)
        assert [(c.won, c.owner) for c in again] == [(False, "x\x1ey")] * 4
        assert [c.done for c in again] == [False, True, True, True]  # k's record: its sid
        holder = await store.client.get(store._claim_key("r", "k", "PA\x1f1"))
        assert holder.endswith(b" x\x1ey")
    finally:
        await store.aclose()


async def test_a_write_that_says_a_connection_was_cleaned_marks_its_claim_done(
    redis_url: str,
) -> None:
    # Two live managers write one session: the loser's own older view of the connection
    # (still `disconnecting`) can land after the winner's `grace` and hide it from the
    # record. The winner's write marks the claim itself done; nothing unmarks it.
    first = RedisStore.from_url(redis_url, namespace="marked", lease_ttl=0.3)
    second = RedisStore.from_url(redis_url, namespace="marked", lease_ttl=0.3)
    try:
        for key in ("a", "b"):
            await first.write([StoreWrite("r", key, record("r", key, state="disconnecting"), 60)])
        held = await first.claim("r", "a", "PA_a", "first")
        gone = await first.claim("r", "b", "PA_b", "first")
        lost = await second.claim("r", "a", "PA_a", "second")
        assert not lost.won and not lost.done and lost.lease == first.lease
        grace = record("r", "a", state="grace")
        await first.write([StoreWrite("r", "a", grace, 60, cleaned=("PA_a",))])
        await first.write([StoreWrite("r", "b", None, 0.0, cleaned=("PA_b",))])  # removed
        for key in ("a", "b"):  # the loser's older view lands after
            await second.write([StoreWrite("r", key, record("r", key, state="disconnecting"), 60)])
        assert (await second.client.get("marked:{r}:claim:a:PA_a")).startswith(b"d ")
        for key, claim in (("a", held), ("b", gone)):
            seen = await second.claim("r", key, f"PA_{key}", "second")
            assert not seen.won and seen.done and seen.token == claim.token
        await crash(first)  # dead now: a claim marked done is still never taken over
        deadline = time.monotonic() + WAIT
        while await second._lease_alive(first.lease):
            assert time.monotonic() < deadline, "the first lease never expired"
            await asyncio.sleep(0.05)
        kept = await second.claim("r", "a", "PA_a", "second")
        assert not kept.won and kept.done and kept.owner == "first"
        assert 0 < await second.client.pttl("marked:{r}:claim:a:PA_a") <= 600_000
    finally:
        await second.aclose()


async def test_a_burst_of_first_claims_takes_one_lease(redis_url: str) -> None:
    # Each claim of a burst at start used to acquire the lease itself: 300 concurrent
    # calls outran the client's pool of 100 connections ("Too many connections").
    store = RedisStore.from_url(redis_url, namespace="burst")
    try:
        claims = await asyncio.wait_for(
            asyncio.gather(*(store.claim("r", f"k{n}", f"PA_{n}", "me") for n in range(300))),
            WAIT,
        )
        assert all(claim.won for claim in claims)
        assert await store.client.zcard("burst:leases") == 1
    finally:
        await store.aclose()


@pytest.mark.parametrize("redis_url", ["redis"], indirect=True)
async def test_aclose_is_bounded_while_redis_does_not_answer(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, namespace="paused", lease_ttl=0.3)
    admin = RedisStore.from_url(redis_url, namespace="paused-admin")
    try:
        await store.write([StoreWrite("r", "a", record("r", "a"), 60.0)])
        # Every write waits 10 s: the lease loop's next refresh is in flight when
        # aclose() cancels it (a cancellation redis-py may turn into its own error).
        await admin.client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.wait_for(store.aclose(), WAIT)
        assert time.monotonic() - started < 5.0
        assert store._lease_task is not None and store._lease_task.done()
    finally:
        await admin.client.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


async def test_the_fleet_view_shows_each_record_as_its_session_entry(redis_url: str) -> None:
    # fleet_snapshot builds RedisStore's entries straight from the checked JSON: they
    # must be what session_entry makes of the record load() returns, key order included.
    from livekit_lifecycle.stores._fleet import session_entry

    store = RedisStore.from_url(redis_url, namespace="entries")
    try:
        await store.write(
            [
                StoreWrite("r", "a", record("r", "a", data={"n": [1, {"x": 2.5}]}), 60.0),
                StoreWrite(
                    "r",
                    "b",
                    record("r", "b", state="grace", grace_deadline=time.time() + 20, user_id="u"),
                    60.0,
                ),
                StoreWrite(
                    "r", "c", record("r", "c", conversation={"items": []}, history=history(1)), 60.0
                ),
            ]
        )
        snapshot = await fleet_snapshot(store)
        loaded = {r.key: session_entry(r, snapshot["taken_at"]) for r in await store.load("r")}
        assert snapshot["rooms"]["r"] == loaded
        for key, entry in snapshot["rooms"]["r"].items():
            assert list(entry) == list(loaded[key])
    finally:
        await store.aclose()
