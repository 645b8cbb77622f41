"""The fleet view on the inspector page: StoreSource over a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from livekit_lifecycle import LifecycleConfig, LifecycleManager, State
from livekit_lifecycle.cli import main
from livekit_lifecycle.inspector import Inspector, Source, StoreSource
from livekit_lifecycle.stores import RedisStore
from livekit_lifecycle.testing import RoomDriver
from livekit_loopback.redis_server import RedisServer
from livekit_loopback.support import eventually
from tests.test_inspector import WAIT, next_event

from .test_restore_retries import frozen

pytestmark = pytest.mark.redis


@pytest.fixture
async def worker(driver: RoomDriver, redis_store: RedisStore) -> AsyncIterator[LifecycleManager]:
    """An agent's manager writing its sessions to the store (another worker, as it were)."""
    manager = LifecycleManager(LifecycleConfig(grace_period=30, store=redis_store))
    manager.attach(driver.room)
    yield manager
    await manager.aclose()


async def test_the_page_follows_every_worker_through_the_store(
    driver: RoomDriver, worker: LifecycleManager, redis_store: RedisStore, redis_server: RedisServer
) -> None:
    driver.connect("alice", active=True)
    await worker.wait_for("alice", State.ACTIVE, timeout=WAIT)  # after the store's restore
    worker.set_user_id("alice", "u-1")
    # The page reads through a store of its own, as `inspect --store URL --web` does.
    reader = RedisStore.from_url(redis_server.url, namespace=redis_store.namespace)
    source = StoreSource(reader, interval=0.05)
    assert isinstance(source, Source)
    try:
        async with (
            await Inspector.start(source) as inspector,
            aiohttp.ClientSession() as http,
            http.get(inspector.url + "api/events") as response,
        ):
            event, snapshot = await next_event(response)
            while not snapshot["rows"]:  # the worker's first write may still be on its way
                event, change = await next_event(response)
                snapshot = {"rows": [change["row"]]}
            [row] = snapshot["rows"]
            assert (row["room"], row["key"], row["state"], row["user_id"]) == (
                driver.room.name,
                "alice",
                "active",
                "u-1",
            )
            assert "data" not in row
            driver.disconnect("alice")
            states = []
            while "grace" not in states:
                event, change = await next_event(response)
                assert event == "change" and change["row"]["key"] == "alice"
                states.append(change["row"]["state"])
            assert change["transition"]["dest"] == "grace"
            await worker.aclose()  # a graceful shutdown deletes the records: the row is removed
            while change["row"]["state"] != "removed":
                event, change = await next_event(response)
    finally:
        await reader.aclose()


def test_inspect_store_web_with_an_unreachable_store_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An unreachable store is a one-line error, never a traceback.

    code = main(["inspect", "--store", "redis://127.0.0.1:1/0", "--web"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("livekit-lifecycle inspect:") and "Traceback" not in err


async def test_the_fleet_page_shows_a_store_outage_and_resumes_after_it(
    driver: RoomDriver, worker: LifecycleManager, redis_store: RedisStore, redis_server: RedisServer
) -> None:
    driver.connect("alice", active=True)
    await worker.wait_for("alice", State.ACTIVE, timeout=WAIT)
    reader = RedisStore.from_url(redis_server.url, namespace=redis_store.namespace, timeout=1.0)
    inspector = await Inspector.start(StoreSource(reader, interval=0.05))
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(inspector.url + "api/events") as response,
        ):
            assert await eventually(
                lambda: [(r["key"], r["state"]) for r in inspector.rows()] == [("alice", "active")],
                timeout=WAIT,
            ), inspector.rows()
            await redis_server.kill()  # SIGKILL: an outage
            event, payload = await next_event(response)
            while event != "status":
                event, payload = await next_event(response)
            assert payload["problem"], payload
            async with http.get(inspector.url + "api/snapshot") as answer:
                state = await answer.json()
            assert state["problem"] == payload["problem"]
            assert [r["key"] for r in state["rows"]] == ["alice"]  # as last seen
            await redis_server.start()  # back, empty: alice's record is gone
            seen: list[tuple[str, str]] = []
            while ("change", "removed") not in seen:
                event, payload = await next_event(response)
                what = payload["row"]["state"] if "row" in payload else payload["problem"]
                seen.append((event, what))
            assert ("status", "") in seen
            assert inspector.problem == ""
    finally:
        await inspector.aclose()  # never raises the outage's error
        await reader.aclose()


async def test_closing_the_fleet_page_is_bounded_while_redis_does_not_answer(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    # The page's pump reads the store through outages; a cancellation redis-py turns into
    # its own error must not keep aclose() waiting on it.
    reader = RedisStore.from_url(redis_server.url, namespace=redis_store.namespace, timeout=60.0)
    inspector = await Inspector.start(StoreSource(reader, interval=0.05))
    try:
        with frozen(redis_server):  # the next poll's command never gets an answer
            await asyncio.sleep(0.3)  # a poll in flight (were none, the bound holds trivially)
            started = time.monotonic()
            await asyncio.wait_for(inspector.aclose(), WAIT)
            assert time.monotonic() - started < 7.0
    finally:
        await reader.aclose()
