"""The watchdog against a real redis-server: a dead job's room is dispatched once, by one of many.

A real manager on a real ``rtc.Room`` (RoomDriver) writes its sessions through
a real ``RedisStore`` with a short lease, then dies (its tasks stop, nothing
is cleaned or written: what SIGKILL leaves). Watchdogs poll the store; the
dispatch is the watchdog's public ``dispatch`` seam, recorded here (the
dispatch through livekit-api's AgentDispatchService is tested against the
loopback server's agent dispatch in tests/e2e).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from livekit_lifecycle import LifecycleConfig, LifecycleManager, State
from livekit_lifecycle._watchdog_command import dispatch_line
from livekit_lifecycle.stores import RedisStore
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.watchdog import DeadRoom, Watchdog, resume_info
from livekit_loopback.redis_server import RedisServer

from .test_manager_store import crash
from .test_restore_retries import frozen

pytestmark = pytest.mark.redis

ROOM = "watched-room"
WAIT = 20.0
LEASE = 0.5


class Fleet:
    """Stores on one namespace of the test's redis-server, closed at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = f"t{uuid.uuid4().hex[:8]}"
        self.stores: list[RedisStore] = []
        self.dispatched: list[tuple[str, str]] = []
        """(room, metadata) of every dispatch, over every watchdog."""

    def store(self, **options: Any) -> RedisStore:
        options.setdefault("lease_ttl", LEASE)
        store = RedisStore.from_url(self.url, namespace=self.namespace, **options)
        self.stores.append(store)
        return store

    async def dispatch(self, room: str, metadata: str) -> str:
        self.dispatched.append((room, metadata))
        return f"AD_{len(self.dispatched)}"  # what a server answers: the dispatch's id

    def watchdog(self, name: str, **options: Any) -> Watchdog:
        options.setdefault("dispatch", self.dispatch)
        return Watchdog(self.store(timeout=options.pop("timeout", 2.0)), name=name, **options)


@pytest.fixture
async def fleet(redis_server: RedisServer) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis_server.url)
    yield fleet
    for store in fleet.stores:
        await store.aclose()


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def poll_until(what: str, predicate: Callable[[], bool], *watchdogs: Watchdog) -> None:
    """Poll with every watchdog at once until ``predicate`` holds (at most ``WAIT`` s)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.gather(*(w.poll() for w in watchdogs))
        await asyncio.sleep(0.02)


async def dead_job(
    fleet: Fleet, room: RoomDriver, **store_options: Any
) -> tuple[RedisStore, LifecycleManager]:
    """A job with alice active and bob in his window, killed: its lease is left to expire."""
    store = fleet.store(**store_options)
    manager = LifecycleManager(LifecycleConfig(store=store, grace_period=30.0))
    manager.attach(room.room)
    await manager.idle()
    room.connect("alice", active=True)
    room.connect("bob", active=True)
    room.disconnect("bob")
    await manager.idle()
    persist = manager._persist
    assert persist is not None
    assert await persist.writer.flush(WAIT)
    assert len((await store.read_room(ROOM)).records) == 2
    crash(manager)
    lease_task = store._lease_task
    assert lease_task is not None
    lease_task.cancel()  # the process is gone: nobody refreshes its lease
    return store, manager


async def dispatches(loopback_server: Any, http_url: str) -> list[Any]:
    """The room's agent dispatches, as the server lists them (Twirp AgentDispatchService)."""
    from livekit import api

    lkapi = api.LiveKitAPI(
        url=http_url, api_key=loopback_server.api_key, api_secret=loopback_server.api_secret
    )
    try:
        return list(await lkapi.agent_dispatch.list_dispatch(ROOM))
    finally:
        await lkapi.aclose()


async def test_two_watchdogs_dispatch_a_dead_jobs_room_once(fleet: Fleet) -> None:
    one, two = fleet.watchdog("wd-one"), fleet.watchdog("wd-two")
    async with RoomDriver(ROOM) as room:
        store = fleet.store()
        live = LifecycleManager(LifecycleConfig(store=store))
        live.attach(room.room)
        room.connect("carol", active=True)
        await live.idle()
        assert live._persist is not None and await live._persist.writer.flush(WAIT)
        # A live job's room is never dispatched.
        assert await one.poll() == [] and await two.poll() == []
        await live.aclose()

    told: list[DeadRoom] = []
    for watchdog in (one, two):
        watchdog._on_dispatch = told.append
    async with RoomDriver(ROOM) as room:
        dead_store, _ = await dead_job(fleet, room)
        started = time.monotonic()
        await poll_until("the dispatch", lambda: bool(fleet.dispatched), one, two)
        # Not before the lease expired (a third of it may have been left at the crash).
        assert time.monotonic() - started >= LEASE * 0.6
        for _ in range(5):  # later polls, by either, dispatch nothing more
            await asyncio.gather(one.poll(), two.poll())
        assert len(fleet.dispatched) == 1
        dispatched_room, metadata = fleet.dispatched[0]
        info = resume_info(metadata)
        assert dispatched_room == ROOM and info is not None
        assert info["dead_owner"] == dead_store.lease and info["sessions"] == 2
        assert info["watchdog"] in ("wd-one", "wd-two")
        assert one.stats["dispatched"] + two.stats["dispatched"] == 1
        assert one.stats["claimed_elsewhere"] + two.stats["claimed_elsewhere"] == 1
        # Told once, with what the dispatcher answered.
        assert told == [DeadRoom(ROOM, dead_store.lease, 2, metadata, "AD_1")]

    # The dispatched job attaches: alice is still there, bob in his window.
    async with RoomDriver(ROOM) as room:
        room.connect("alice", active=True)
        new_store = fleet.store()
        new_job = LifecycleManager(LifecycleConfig(store=new_store, grace_period=30.0))
        new_job.attach(room.room)
        await until(lambda: new_job.stats["sessions_restored"] == 2, "the restore")
        assert new_job.state_of("bob") is State.GRACE
        assert new_job._persist is not None and await new_job._persist.writer.flush(WAIT)
        assert (await new_store.read_room(ROOM)).owner == new_store.lease
        assert await one.poll() == [] and await two.poll() == []
        assert len(fleet.dispatched) == 1
        await new_job.aclose()


async def test_a_failed_dispatch_is_retried_by_the_claim_holder_only(fleet: Fleet) -> None:
    failures = [RuntimeError("server unreachable")] * 2

    async def flaky(room: str, metadata: str) -> None:
        if failures:
            raise failures.pop()
        await fleet.dispatch(room, metadata)

    one = fleet.watchdog("wd-one", dispatch=flaky)
    two = fleet.watchdog("wd-two")
    async with RoomDriver(ROOM) as room:
        await dead_job(fleet, room)
        await poll_until("a failed dispatch", lambda: one.stats["dispatch_failures"] > 0, one)
        # wd-one holds the claim: wd-two never dispatches the room.
        for _ in range(3):
            assert await two.poll() == []
        assert two.stats["claimed_elsewhere"] == 1
        await poll_until("the retried dispatch", lambda: bool(fleet.dispatched), one)
        assert one.stats["dispatch_failures"] == 2 and len(fleet.dispatched) == 1


async def test_redis_unresponsive_dispatches_nothing_then_recovery_resumes(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    one = fleet.watchdog("wd-one", timeout=0.3)
    two = fleet.watchdog("wd-two", timeout=0.3)
    async with RoomDriver(ROOM) as room:
        await dead_job(fleet, room)
        pid = redis_server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # frozen: every command times out
        try:
            await asyncio.sleep(LEASE * 2)  # the lease expires meanwhile
            for _ in range(3):
                assert await one.poll() == [] and await two.poll() == []
            assert one.stats["store_errors"] >= 3 and not fleet.dispatched
        finally:
            os.kill(pid, signal.SIGCONT)
        await poll_until("the dispatch", lambda: bool(fleet.dispatched), one, two)
        for _ in range(3):
            await asyncio.gather(one.poll(), two.poll())
        assert len(fleet.dispatched) == 1


async def test_run_in_the_background_and_bad_arguments(fleet: Fleet) -> None:
    watchdog = fleet.watchdog("wd-bg", interval=0.05)
    async with RoomDriver(ROOM) as room, watchdog:
        await dead_job(fleet, room)
        await until(lambda: len(fleet.dispatched) == 1, "the background dispatch")
    assert watchdog.stats["polls"] > 1
    with pytest.raises(TypeError, match="durable store with leases"):
        Watchdog(object(), dispatch=fleet.dispatch)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        Watchdog(fleet.store(), dispatch=fleet.dispatch, interval=0)
    assert resume_info("") is None and resume_info("not json") is None
    assert resume_info('{"livekit_lifecycle": {"resume": false}}') is None


async def test_the_default_dispatcher_creates_the_dispatch_on_a_livekit_server(
    fleet: Fleet, loopback_server: Any
) -> None:
    """livekit-api's AgentDispatchService against the loopback server's (no worker takes it)."""
    http_url = loopback_server.url.replace("ws://", "http://")
    watchdog = Watchdog(
        fleet.store(),
        url=http_url,
        api_key=loopback_server.api_key,
        api_secret=loopback_server.api_secret,
        agent_name="my-agent",
        name="wd-lk",
    )
    try:
        async with RoomDriver(ROOM) as room:
            dead_store, _ = await dead_job(fleet, room)
            await poll_until("the dispatch", lambda: watchdog.stats["dispatched"] == 1, watchdog)
        listed = await dispatches(loopback_server, http_url)
        named = [d for d in listed if d.agent_name == "my-agent"]
        assert len(named) == 1
        info = resume_info(named[0].metadata)
        assert info is not None and info["dead_owner"] == dead_store.lease
    finally:
        await watchdog.aclose()


async def test_a_background_watchdog_wakes_as_the_lease_expires_not_an_interval_later(
    fleet: Fleet,
) -> None:
    """Polling every 30 s, the watchdog still dispatches as the dead lease expires: it
    sleeps until the next lease expiry when that comes first (issue 22 point 4)."""
    lease = 2.0
    watchdog = fleet.watchdog("wd-wake", interval=30.0)
    try:
        async with RoomDriver(ROOM) as room:
            dead_store, _ = await dead_job(fleet, room, lease_ttl=lease)
            crashed = time.monotonic()
            watchdog.start()  # its first poll finds the lease alive, and when it expires
            await until(lambda: len(fleet.dispatched) == 1, "the dispatch", timeout=lease + 10.0)
            waited = time.monotonic() - crashed
            assert lease * 0.6 <= waited < lease + 3.0  # at the expiry, not 30 s later
            assert watchdog.stats["polls"] <= 3
            index = dead_store._lease_rooms(dead_store.lease)
            assert len(await dead_store.client.smembers(index)) == 1  # the room, still dead

        # The new job takes the room over: the next poll drops it from the dead lease's rooms.
        async with RoomDriver(ROOM) as room:
            room.connect("alice", active=True)
            new_job = LifecycleManager(LifecycleConfig(store=fleet.store(), grace_period=30.0))
            new_job.attach(room.room)
            await until(lambda: new_job.stats["sessions_restored"] == 2, "the restore")
            assert new_job._persist is not None and await new_job._persist.writer.flush(WAIT)
            assert await watchdog.poll() == []
            assert await dead_store.client.smembers(index) == set()
            await new_job.aclose()
    finally:
        await watchdog.aclose()
    assert len(fleet.dispatched) == 1


async def test_a_dead_lease_leaves_the_leases_once_nothing_of_it_is_left_to_recover(
    fleet: Fleet,
) -> None:
    """Issue 22's open note: a dead lease used to stay in ``ns:leases`` (one ``SMEMBERS``
    per poll) for the rooms' retention plus ``claim_ttl``, ~11 min by default. The poll that
    finds none of its rooms left to recover drops it; a dead lease that still has a room to
    recover, and a live one, stay."""
    watchdog = fleet.watchdog("wd-prune")
    live = fleet.store(lease_ttl=5.0)
    await live._ensure_lease()  # a live process's lease, refreshed in the background
    idle = fleet.store()
    await idle._ensure_lease()  # a process that died before it wrote any room
    assert idle._lease_task is not None
    idle._lease_task.cancel()
    client = live.client
    leases = f"{fleet.namespace}:leases"

    async def listed() -> set[str]:
        return {m.decode() for m in await client.zrange(leases, 0, -1)}

    async with RoomDriver(ROOM) as room:
        dead_store, _ = await dead_job(fleet, room)
        index = dead_store._lease_rooms(dead_store.lease)
        assert await listed() == {live.lease, idle.lease, dead_store.lease}
        await poll_until("the dispatch", lambda: bool(fleet.dispatched), watchdog)
        # The idle lease expired first (it was taken first): gone at the latest with this
        # poll. The dead job's room is dispatched, not recovered yet: its lease stays.
        assert await listed() == {live.lease, dead_store.lease}
        assert await watchdog.poll() == []  # dispatched already: nothing more
        assert await listed() == {live.lease, dead_store.lease}
        assert await client.smembers(index) == {ROOM.encode()}

    # The new job takes the room over: the next poll drops the room and then the lease.
    async with RoomDriver(ROOM) as room:
        room.connect("alice", active=True)
        new_store = fleet.store(lease_ttl=5.0)
        new_job = LifecycleManager(LifecycleConfig(store=new_store, grace_period=30.0))
        new_job.attach(room.room)
        await until(lambda: new_job.stats["sessions_restored"] == 2, "the restore")
        assert new_job._persist is not None and await new_job._persist.writer.flush(WAIT)
        assert await watchdog.poll() == []
        assert await listed() == {live.lease, new_store.lease}
        assert await client.smembers(index) == set()
        # Nothing expired is left: the next polls cost one ZRANGEBYSCORE (and the
        # next expiry), whatever died before.
        now_ms = round(time.time() * 1000)
        assert await client.zrangebyscore(leases, "-inf", now_ms) == []
        # A dropped lease is dead all the same: its claims can be taken over.
        assert not await new_store._lease_alive(dead_store.lease)
        await new_job.aclose()
    assert len(fleet.dispatched) == 1


async def test_the_command_prints_one_line_per_dispatch(fleet: Fleet, loopback_server: Any) -> None:
    """``livekit-lifecycle watchdog`` as a user runs it: one stable line per dispatch, with
    the room, the dead lease and the id the server gave the dispatch."""
    http_url = loopback_server.url.replace("ws://", "http://")
    command = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "livekit_lifecycle", "watchdog"),
        *("--store", fleet.url, "--namespace", fleet.namespace, "--interval", "0.2"),
        env={
            **os.environ,
            "LIVEKIT_URL": http_url,
            "LIVEKIT_API_KEY": loopback_server.api_key,
            "LIVEKIT_API_SECRET": loopback_server.api_secret,
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert command.stdout is not None
    try:
        started = (await asyncio.wait_for(command.stdout.readline(), WAIT)).decode()
        assert started.startswith("livekit-lifecycle watchdog ")  # it runs
        async with RoomDriver(ROOM) as room:
            dead_store, _ = await dead_job(fleet, room)
            line = (await asyncio.wait_for(command.stdout.readline(), WAIT)).decode()
        listed = await dispatches(loopback_server, http_url)
        # The server is shared: the room may hold other tests' dispatches.
        [dispatch] = [
            d
            for d in listed
            if (info := resume_info(d.metadata)) and info["dead_owner"] == dead_store.lease
        ]
        assert dispatch.id.startswith("AD_")
        assert line == (
            f"livekit-lifecycle watchdog: dispatched room={ROOM}"
            f" dead_lease={dead_store.lease} sessions=2 dispatch_id={dispatch.id}\n"
        )
    finally:
        if command.returncode is None:
            command.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(command.stdout.read(), WAIT)).decode()
        code = await asyncio.wait_for(command.wait(), WAIT)
    assert code == 0
    assert rest.startswith("livekit-lifecycle watchdog: stopped")
    assert not [x for x in rest.splitlines() if x.startswith(line[:39])]  # one dispatch, one line


def test_a_dispatch_line_quotes_what_is_not_a_plain_word() -> None:
    plain = DeadRoom("r1", "host:42:1a2b", 3, "{}", "AD_x")
    assert dispatch_line(plain) == (
        "livekit-lifecycle watchdog: dispatched room=r1 dead_lease=host:42:1a2b sessions=3"
        " dispatch_id=AD_x"
    )
    odd = DeadRoom('a room "x"=1', "h:1:2", 0, "{}")
    assert dispatch_line(odd) == (
        "livekit-lifecycle watchdog: dispatched room="
        + json.dumps('a room "x"=1')
        + ' dead_lease=h:1:2 sessions=0 dispatch_id=""'
    )


async def test_an_on_dispatch_that_raises_is_logged_and_the_watchdog_goes_on(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "livekit_lifecycle")

    def broken(dead_room: DeadRoom) -> None:
        raise RuntimeError("printer on fire")

    watchdog = fleet.watchdog("wd-told", on_dispatch=broken)
    async with RoomDriver(ROOM) as room:
        await dead_job(fleet, room)
        await poll_until("the dispatch", lambda: bool(fleet.dispatched), watchdog)
    assert watchdog.stats["dispatched"] == 1 and len(fleet.dispatched) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("watchdog.on_dispatch_failed" in m for m in messages)
    assert messages.index("watchdog.dispatched") < messages.index("watchdog.on_dispatch_failed")


async def test_aclose_is_bounded_while_redis_does_not_answer(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    # redis-py may turn the cancellation of a command in flight into its own error, which
    # the polling loop takes for an outage: aclose() must not wait on that loop for ever.
    watchdog = fleet.watchdog("wd-frozen", timeout=60.0, interval=0.05)
    watchdog.start()
    await until(lambda: watchdog.stats["polls"] >= 1, "a first poll")
    with frozen(redis_server):  # the next poll's command never gets an answer
        await asyncio.sleep(0.3)  # a poll in flight (were none, the bound holds trivially)
        started = time.monotonic()
        await asyncio.wait_for(watchdog.aclose(), WAIT)
        assert time.monotonic() - started < 7.0
