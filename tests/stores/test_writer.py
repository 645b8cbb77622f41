"""StoreWriter: write-behind that is ordered, coalesced, and rides out a Redis outage."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from livekit_lifecycle.stores import MemoryStore, RedisStore, SessionRecord
from livekit_lifecycle.stores._writer import STORE_STATS, StoreWriter
from livekit_loopback.redis_server import RedisServer

WAIT = 20.0


class Table:
    """What a manager would hand the writer: its live sessions, rendered on demand."""

    def __init__(self) -> None:
        self.records: dict[str, SessionRecord] = {}
        self.stats = dict.fromkeys(STORE_STATS, 0)
        self.rendered: list[str] = []

    def set(self, key: str, **fields: Any) -> None:
        base: dict[str, Any] = {"room": "r", "key": key, "identity": key, "sid": f"PA_{key}"}
        base.setdefault("state", "active")
        self.records[key] = SessionRecord(**{**base, **fields})

    def render(self, key: str) -> SessionRecord | None:
        self.rendered.append(key)
        return self.records.get(key)

    def writer(self, store: Any, **options: Any) -> StoreWriter:
        return StoreWriter(
            store,
            room=lambda: "r",
            render=self.render,
            live_keys=lambda: list(self.records),
            grace_period=30.0,
            stats=self.stats,
            **options,
        )


async def stored(store: Any) -> dict[str, str]:
    return {r.key: r.state for r in await store.load("r")}


async def test_marks_are_coalesced_and_the_latest_state_wins() -> None:
    store, table = MemoryStore(), Table()
    writer = table.writer(store)
    writer.start()
    for n in range(50):
        table.set("a", state="active", reconnects=n)
        writer.mark("a")
    table.set("b")
    writer.mark("b")
    assert await writer.flush(WAIT)
    loaded = {r.key: r for r in await store.load("r")}
    assert loaded["a"].reconnects == 49 and set(loaded) == {"a", "b"}
    assert table.rendered.count("a") <= 2  # written once, or twice at most, never 50 times
    del table.records["a"]
    writer.mark("a")
    assert await writer.flush(WAIT)
    assert await stored(store) == {"b": "active"}
    assert await writer.aclose(WAIT)


async def test_a_key_is_written_once_its_own_window_passed_and_a_short_one_never() -> None:
    # Each key waits its own window from its first mark: a key marked while an older
    # one waits is not swept into the older one's write, and a session that came and
    # went within its window costs no write at all (no record, no delete).
    store, table = MemoryStore(), Table()
    writer = table.writer(store, coalesce=0.5)
    writer.start()
    table.set("old")
    writer.mark("old")
    marked = time.monotonic()
    await asyncio.sleep(0.25)
    table.set("young")
    writer.mark("young")
    deadline = time.monotonic() + WAIT
    while "old" not in await stored(store):
        assert time.monotonic() < deadline, "the old key was never written"
        await asyncio.sleep(0.01)
    assert time.monotonic() - marked >= 0.5
    if time.monotonic() - marked < 0.7:  # the young key's window has not passed yet
        assert "young" not in table.rendered
    del table.records["young"]  # gone before its window passed
    writer.mark("young")
    assert await writer.flush(WAIT)
    assert await stored(store) == {"old": "active"}
    assert table.rendered.count("young") == 1  # found gone: nothing written, nothing deleted
    assert table.stats["store_writes"] == 1
    await writer.aclose(WAIT)


async def test_unserialisable_data_keeps_the_previous_record_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, table = MemoryStore(), Table()
    writer = table.writer(store)
    writer.start()
    table.set("a", data={"ok": 1})
    writer.mark("a")
    assert await writer.flush(WAIT)
    table.set("a", data={"bad": {1, 2}})
    writer.mark("a")
    with caplog.at_level(logging.ERROR, "livekit_lifecycle"):
        assert await writer.flush(WAIT)
    assert [r.data for r in await store.load("r")] == [{"ok": 1}]
    assert table.stats["store_unserialisable"] == 1
    assert any("store.unserialisable" in r.getMessage() for r in caplog.records)
    await writer.aclose(WAIT)


async def until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.mark.redis
async def test_redis_killed_and_restarted_converges_with_one_log_per_outage(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore.from_url(redis_server.url, timeout=0.5)
    table = Table()
    writer = table.writer(store, timeout=1.0)
    writer.start()
    caplog.set_level(logging.INFO, "livekit_lifecycle")
    try:
        for key in "abc":
            table.set(key)
            writer.mark(key)
        assert await writer.flush(WAIT)

        await redis_server.kill()
        for n in range(30):  # acknowledged changes during the outage
            table.set("a", state="grace", reconnects=n, grace_deadline=time.time() + 30)
            writer.mark("a")
            await asyncio.sleep(0.01)
        del table.records["b"]
        writer.mark("b")
        table.set("d")
        writer.mark("d")
        assert not await writer.flush(0.5)
        assert not writer.available
        await redis_server.start()  # empty: nothing was saved

        await until(lambda: writer.flush(0.1), "the writer never caught up")
        reader = RedisStore.from_url(redis_server.url, namespace=store.namespace)
        assert await stored(reader) == {"a": "grace", "c": "active", "d": "active"}
        assert next(r for r in await reader.load("r") if r.key == "a").reconnects == 29
        await reader.aclose()
    finally:
        await writer.aclose(WAIT)
        await store.aclose()
    assert table.stats["store_outages"] == 1 and table.stats["store_errors"] >= 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("store.unavailable" in m for m in messages) == 1
    assert sum("store.recovered" in m for m in messages) == 1


@pytest.mark.redis
async def test_marking_never_waits_for_a_stalled_store(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url, timeout=0.5)
    table = Table()
    writer = table.writer(store, timeout=0.5)
    writer.start()
    try:
        await redis_server.kill()
        started = time.perf_counter()
        for n in range(1000):
            table.set(f"k{n}")
            writer.mark(f"k{n}")
        assert time.perf_counter() - started < 0.5
    finally:
        await writer.aclose(0.1)
        await store.aclose()


async def test_a_session_gone_before_its_first_write_is_never_sent() -> None:
    store, table = MemoryStore(), Table()
    writes: list[list[str]] = []
    write = store.write

    async def counted(batch: Any) -> None:
        writes.append([entry.key for entry in batch])
        await write(batch)

    store.write = counted  # type: ignore[method-assign]
    writer = table.writer(store)
    writer.start()
    table.set("brief")
    writer.mark("brief")
    del table.records["brief"]  # removed within the coalescing window
    writer.mark("brief")
    table.set("kept")
    writer.mark("kept")
    assert await writer.flush(WAIT)
    assert writes == [["kept"]]  # no delete of a record that was never written
    del table.records["kept"]
    writer.mark("kept")
    writer.mark("restored", stored=True)  # a record the writer did not write: deleted
    assert await writer.flush(WAIT)
    assert writes[1:] == [["kept", "restored"]]
    assert await stored(store) == {}
    assert await writer.aclose(WAIT)


async def test_cleaned_connections_ride_on_the_keys_next_write_until_one_lands() -> None:
    # What a RedisStore marks its claims done with (docs/stores.md, a live manager that
    # lost the claim): each connection whose cleanup ended, on its key's next write or
    # deletion; kept across a failed write, sent once.
    store, table = MemoryStore(), Table()
    sent: list[tuple[str, bool, tuple[str, ...]]] = []
    write = store.write
    failures = [RuntimeError("Redis is down")]

    async def recorded(batch: Any) -> None:
        if failures:
            raise failures.pop()
        sent.extend((e.key, e.record is None, e.cleaned) for e in batch)
        await write(batch)

    store.write = recorded  # type: ignore[method-assign]
    writer = table.writer(store)
    writer.start()
    table.set("a", state="grace")
    writer.mark("a", cleaned="PA_a1")
    writer.mark("a", cleaned="PA_a2")
    assert await writer.flush(WAIT)  # after the failed write, retried
    writer.mark("a")
    assert await writer.flush(WAIT)
    # Sent once (the outage's end rewrites every session: without them again).
    assert sent[0] == ("a", False, ("PA_a1", "PA_a2"))
    assert sent[1:] and all(entry == ("a", False, ()) for entry in sent[1:])
    del table.records["a"]
    writer.mark("a", cleaned="PA_a3")
    assert await writer.flush(WAIT)
    assert sent[-1] == ("a", True, ("PA_a3",))
    assert await writer.aclose(WAIT)
