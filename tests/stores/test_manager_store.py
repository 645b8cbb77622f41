"""A manager with a durable store: restart continuity, claims, outages (real redis-server)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State
from livekit_lifecycle.invariants import InvariantChecker, check_closed, check_manager
from livekit_lifecycle.stores import (
    MemoryStore,
    RedisStore,
    SessionData,
    SessionRecord,
    StoreWrite,
)
from livekit_lifecycle.testing import RoomDriver
from livekit_loopback.redis_server import RedisServer

WAIT = 20.0
ROOM = "test-room"  # the driver fixture's room


def crash(manager: LifecycleManager) -> None:
    """What SIGKILL leaves of a manager: nothing runs any more, nothing is cleaned or written.

    In-process stand-in for the two-process test (tests/e2e/test_store_crash.py).
    """
    manager.detach()
    persist = manager._persist
    assert persist is not None
    persist.stop_restoring()
    task = persist.writer._task
    if task is not None:
        task.cancel()
    runtime = manager._runtime
    for session in list(runtime.sessions.values()):
        runtime.abandon(session)
    runtime.closing = True


class Fleet:
    """Managers on the test's redis-server, each checked and closed at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace = f"t{uuid.uuid4().hex[:8]}"
        self.stores: list[RedisStore] = []
        self.managers: list[LifecycleManager] = []
        self.checkers: list[InvariantChecker] = []
        self.cleaned: list[tuple[str, str]] = []
        """(key, sid) per cleanup callback call, over every manager."""

    def store(self, **options: Any) -> RedisStore:
        store = RedisStore.from_url(self.url, namespace=self.namespace, **options)
        self.stores.append(store)
        return store

    def manager(self, room: rtc.Room | None, **config: Any) -> LifecycleManager:
        config.setdefault("store", self.store())
        manager = LifecycleManager(LifecycleConfig(**config))
        self.checkers.append(InvariantChecker(manager))

        @manager.add_cleanup
        def record_cleanup(session: Session) -> None:
            self.cleaned.append((session.key, session.sid))

        if room is not None:
            manager.attach(room)
        self.managers.append(manager)
        return manager

    async def stored(self) -> dict[str, Any]:
        reader = self.store()
        return {r.key: r for r in await reader.load(ROOM)}


@pytest.fixture
async def fleet(fleet_url: str) -> AsyncIterator[Fleet]:
    fleet = Fleet(fleet_url)
    yield fleet
    for manager in fleet.managers:
        if not manager.closed:
            await manager.aclose()
        assert check_closed(manager) == []
    for store in fleet.stores:
        await store.aclose()
    for checker in fleet.checkers:
        checker.raise_if_violated()


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def settled(manager: LifecycleManager) -> None:
    await manager.idle()
    persist = manager._persist
    assert persist is not None
    # A restore deferred while the store was down is retried in the background (not
    # what idle() waits for); nothing is written before it has answered.
    await until(lambda: persist._restored, "the stored sessions loaded or merged")
    assert await persist.writer.flush(WAIT), "the store never caught up"


# --------------------------------------------------------------------------- default


async def test_the_default_store_does_no_store_work(driver: RoomDriver) -> None:
    manager = LifecycleManager()
    assert isinstance(manager.config.store, MemoryStore) and manager._persist is None
    manager.attach(driver.room)
    driver.connect("alice", active=True)
    session = manager.get("alice")
    assert session is not None and type(session.data) is dict
    session.data["anything"] = object()  # unchanged: no store, no check
    assert not any(name.startswith("store_") for name in manager.stats)
    await manager.aclose()


# --------------------------------------------------------------------------- data


@pytest.mark.redis
async def test_data_is_checked_at_assignment_and_written_behind(
    fleet: Fleet, driver: RoomDriver
) -> None:
    manager = fleet.manager(driver.room)
    await manager.idle()
    driver.connect("alice", active=True)
    session = manager.get("alice")
    assert session is not None and isinstance(session.data, SessionData)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        session.data["socket"] = object()
    with pytest.raises(TypeError):
        session.data = {"bad": {1, 2}}
    session.data["cart"] = ["tea"]
    manager.set_user_id("alice", "u-1")
    await settled(manager)
    stored = (await fleet.stored())["alice"]
    assert (stored.state, stored.user_id, stored.data) == ("active", "u-1", {"cart": ["tea"]})
    session.data = {"cart": ["tea", "milk"]}
    assert isinstance(session.data, SessionData)
    del session.data["cart"]
    session.data["n"] = 1
    await settled(manager)
    assert (await fleet.stored())["alice"].data == {"n": 1}
    driver.disconnect("alice")
    await settled(manager)
    grace = (await fleet.stored())["alice"]
    assert grace.state == "grace" and grace.cleanups == 1
    assert grace.grace_deadline is not None
    assert grace.grace_deadline == pytest.approx(time.time() + 30.0, abs=2.0)
    await manager.aclose()
    assert await fleet.stored() == {}  # a graceful shutdown ends the sessions


@pytest.mark.redis
async def test_attaching_takes_the_lease_before_the_first_session(
    fleet: Fleet, driver: RoomDriver
) -> None:
    # The store gets ready when a manager attaches (lease, scripts, connections): the
    # first cleanups of a burst do not wait for them. A store that only reads does not.
    manager = fleet.manager(driver.room)
    store = manager.config.store
    assert isinstance(store, RedisStore)
    await manager.idle()
    leases = f"{fleet.namespace}:leases"
    deadline = time.monotonic() + WAIT
    while await store.client.zscore(leases, store.lease) is None:
        assert time.monotonic() < deadline, "the lease was not taken at attach"
        await asyncio.sleep(0.01)
    assert manager.sessions == {} and await fleet.stored() == {}
    reader = fleet.stores[-1]
    assert await store.client.zscore(leases, reader.lease) is None
    driver.connect("alice", active=True, sid="PA_alice")
    driver.disconnect("alice")
    await until(lambda: fleet.cleaned == [("alice", "PA_alice")], "alice cleaned once")
    await manager.aclose()


# --------------------------------------------------------------------------- restart


@pytest.mark.redis
async def test_a_new_manager_restores_the_sessions_a_crashed_one_left(fleet: Fleet) -> None:
    async with RoomDriver(ROOM) as first_room:
        first = fleet.manager(first_room.room, grace_period=3.0)
        await first.idle()
        alice = first_room.connect("alice", active=True)
        bob = first_room.connect("bob", active=True)
        carol = first_room.connect("carol", active=True)
        dave = first_room.connect("dave", active=True)
        erin = first_room.connect("erin", active=True)
        for key in ("alice", "bob", "carol", "dave", "erin"):
            first.set_user_id(key, f"u-{key}")
            session = first.get(key)
            assert session is not None
            session.data["visits"] = [key]
        first_room.disconnect("bob")
        first_room.disconnect("carol")
        first_room.disconnect("erin")
        await settled(first)
        bob_deadline = (await fleet.stored())["bob"].grace_deadline
        assert bob_deadline is not None
        crash(first)
    assert sorted(fleet.cleaned) == [("bob", bob.sid), ("carol", carol.sid), ("erin", erin.sid)]
    fleet.cleaned.clear()

    # Carol's window expires while no process is alive.
    carol_record = (await fleet.stored())["carol"]
    store = fleet.store()
    await store.write([_with(carol_record, grace_deadline=time.time() - 1.0)])

    async with RoomDriver(ROOM) as second_room:
        second_room.connect("alice", sid=alice.sid, active=True)  # never left
        erin_again = second_room.connect("erin", sid="PA_erin_2", active=True)  # refreshed
        # dave left while no process was alive: not in the room any more.
        removed: list[tuple[str, float]] = []
        second = fleet.manager(None, grace_period=3.0)
        second.on("removed", lambda s: removed.append((s.key, time.time())))
        second.attach(second_room.room)
        await until(lambda: second.stats["sessions_restored"] == 5, "the restore")
        await until(lambda: ("dave", dave.sid) in fleet.cleaned, "dave's cleanup")
        await second.idle()

        restored = {key: second.get(key) for key in ("alice", "bob", "dave", "erin")}
        assert all(s is not None for s in restored.values())
        assert {k: s.state for k, s in restored.items() if s} == {
            "alice": State.ACTIVE,
            "bob": State.GRACE,
            "dave": State.GRACE,
            "erin": State.ACTIVE,
        }
        for key, session in restored.items():
            assert session is not None
            assert session.user_id == f"u-{key}" and session.data == {"visits": [key]}
        alice_session, erin_session = restored["alice"], restored["erin"]
        assert alice_session is not None and alice_session.sid == alice.sid
        assert alice_session.participant is second_room.room.remote_participants["alice"]
        assert erin_session is not None and erin_session.sid == erin_again.sid
        assert erin_session.reconnects == 1 and erin_session.cleanups == 1
        # Carol expired while away: removed at once, her one cleanup not run again.
        assert second.stats["sessions_expired_while_away"] == 1
        assert "carol" in [key for key, _ in removed] and second.get("carol") is None
        assert fleet.cleaned == [("dave", dave.sid)]
        assert check_manager(second) == []

        # Bob keeps what was left of his window, not a fresh one.
        await until(lambda: second.get("bob") is None, "bob's removal", timeout=10)
        removed_at = dict(removed)["bob"]
        assert removed_at == pytest.approx(bob_deadline, abs=0.5)
        await settled(second)
        stored = await fleet.stored()
        assert {"alice", "erin"} <= set(stored) and not {"bob", "carol"} & set(stored)
        assert stored["alice"].owner == second._persist.owner  # type: ignore[union-attr]
        await second.aclose()
    assert sorted(fleet.cleaned) == sorted(
        [("dave", dave.sid), ("alice", alice.sid), ("erin", erin_again.sid)]
    )


@pytest.mark.redis
async def test_events_during_the_restore_wait_for_it(fleet: Fleet) -> None:
    async with RoomDriver(ROOM) as first_room:
        first = fleet.manager(first_room.room)
        await first.idle()
        first_room.connect("alice", active=True)
        first.set_user_id("alice", "u-alice")
        first_room.disconnect("alice")
        await settled(first)
        crash(first)
    async with RoomDriver(ROOM) as second_room:
        second = fleet.manager(second_room.room)
        # Alice comes back before the records have been read.
        second_room.connect("alice", active=True)
        assert second.get("alice") is None
        await until(lambda: second.state_of("alice") is State.ACTIVE, "alice's reconnect")
        session = second.get("alice")
        assert session is not None and session.user_id == "u-alice" and session.reconnects == 1
        await second.aclose()


# --------------------------------------------------------------------------- claims


@pytest.mark.redis
async def test_two_managers_on_one_room_clean_each_connection_once(fleet: Fleet) -> None:
    rng = random.Random(12)
    connections: list[tuple[str, str]] = []
    async with RoomDriver(ROOM) as one, RoomDriver(ROOM) as two:
        managers = [fleet.manager(one.room), fleet.manager(two.room)]
        for manager in managers:
            await manager.idle()
        drivers = [one, two]
        for round_ in range(200):
            key = f"user-{round_ % 7}"
            sid = f"PA_{round_:05d}"
            for driver in drivers:
                if key in driver.room.remote_participants:
                    driver.disconnect(key)
            order = drivers[:]
            rng.shuffle(order)
            for driver in order:  # both processes see the connection, in either order
                driver.connect(key, sid=sid, active=rng.random() < 0.7)
                if rng.random() < 0.5:
                    await asyncio.sleep(0)
            connections.append((key, sid))
            rng.shuffle(order)
            if rng.random() < 0.6:
                for driver in order:
                    driver.disconnect(key)
                    if rng.random() < 0.5:
                        await asyncio.sleep(0)
        # Settled first: a connection still queued behind a cleanup when shutdown
        # begins gets no session (the core's shutdown rule, store or not).
        for manager in managers:
            await manager.idle()
        for manager in managers:
            await manager.aclose()
    ended = sorted(fleet.cleaned)
    assert ended == sorted(set(ended)), "a connection was cleaned twice"
    assert ended == sorted(connections), sorted(set(connections) - set(ended))
    # Every cleanup was decided by a claim; whichever manager won it.
    assert all(m.stats["store_claims_unverified"] == 0 for m in managers)
    assert sum(m.stats["store_claims_lost"] for m in managers) >= len(connections)


async def _two_on_alice(
    fleet: Fleet, one: RoomDriver, two: RoomDriver, hang: asyncio.Event
) -> tuple[LifecycleManager, LifecycleManager, list[Any], list[Any]]:
    """Two managers on one room, each with a RedisStore (a lease) of its own: alice's
    connection ends, the first sees it first and wins the claim; its cleanup hangs on
    ``hang``; the second loses the claim and waits. Each list gets the claims its
    manager's callbacks ran under."""
    winner = fleet.manager(one.room, store=fleet.store(lease_ttl=0.5), cleanup_timeout=5.0)
    loser = fleet.manager(two.room, store=fleet.store(lease_ttl=1.0), cleanup_timeout=5.0)
    won: list[Any] = []
    taken: list[Any] = []

    @winner.add_cleanup
    async def stuck(session: Session) -> None:
        won.append(session.cleanup_claim)
        await hang.wait()

    loser.add_cleanup(lambda s: taken.append(s.cleanup_claim))
    for manager in (winner, loser):
        await manager.idle()
    for driver in (one, two):
        driver.connect("alice", sid="PA_alice", active=True)
    await settled(winner)
    await settled(loser)
    one.disconnect("alice")
    await until(lambda: bool(won), "the winner's cleanup")
    two.disconnect("alice")
    await until(lambda: loser.stats["store_claims_waited"] == 1, "the loser waiting")
    return winner, loser, won, taken


@pytest.mark.redis
async def test_a_live_manager_that_lost_the_claim_takes_it_over_when_the_winner_dies(
    fleet: Fleet,
) -> None:
    # Exactly once beside a live loser: the winner dies mid-cleanup; the manager that
    # lost the claim was waiting in `disconnecting`, sees the winner's lease expire, takes
    # the claim over with a higher token and runs the callbacks, told it is a retry.
    hang = asyncio.Event()
    async with RoomDriver(ROOM) as one, RoomDriver(ROOM) as two:
        winner, loser, won, taken = await _two_on_alice(fleet, one, two, hang)
        assert loser.state_of("alice") is State.DISCONNECTING and taken == []
        crash(winner)
        store = winner.config.store
        assert isinstance(store, RedisStore) and store._lease_task is not None
        store._lease_task.cancel()  # the process is gone: its lease is no longer refreshed
        await until(lambda: bool(taken), "the claim taken over")
        await loser.idle()
        (held,) = won
        (claim,) = taken
        assert held is not None and not held.retry
        assert claim is not None and claim.retry and claim.token > held.token
        assert loser.state_of("alice") is State.GRACE
        assert loser.stats["store_claims_waited"] == 1
        assert loser.stats["store_claims_taken_over"] == 1
        assert loser.stats["store_claims_lost"] == 0
        await loser.aclose()
    fleet.checkers.pop(0)  # the crashed stand-in: see the crash-mid-cleanup test
    hang.set()
    await winner.idle()


@pytest.mark.redis
async def test_a_live_manager_that_lost_the_claim_runs_nothing_when_the_winner_finishes(
    fleet: Fleet,
) -> None:
    hang = asyncio.Event()
    async with RoomDriver(ROOM) as one, RoomDriver(ROOM) as two:
        winner, loser, won, taken = await _two_on_alice(fleet, one, two, hang)
        started = time.monotonic()
        hang.set()  # the winner finishes: its record says so, the loser moves on
        await until(lambda: loser.state_of("alice") is State.GRACE, "the loser moved on")
        assert time.monotonic() - started < 1.0  # not its wait's bound (1 s + 5 s)
        await winner.idle()
        await loser.idle()
        assert len(won) == 1 and taken == []
        assert winner.state_of("alice") is State.GRACE
        assert loser.stats["store_claims_waited"] == 1
        assert loser.stats["store_claims_taken_over"] == 0
        assert loser.stats["store_claims_lost"] == 1
        assert sorted(fleet.cleaned) == [("alice", "PA_alice")]


# --------------------------------------------------------------------------- faults


@pytest.mark.redis
@pytest.mark.parametrize("fleet_url", ["redis"], indirect=True)
async def test_redis_down_at_start_then_back(
    redis_server: RedisServer, fleet: Fleet, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    await redis_server.kill()
    caplog.set_level(logging.INFO, "livekit_lifecycle")
    manager = fleet.manager(driver.room, store=fleet.store(timeout=0.3))
    assert manager._persist is not None
    manager._persist.hold_for = 0.5  # then in memory, merged when the store is back
    await manager.idle()
    assert manager.stats["store_restores_deferred"] == 1
    for n in range(5):
        driver.connect(f"u{n}", active=True)
        manager.set_user_id(f"u{n}", f"id-{n}")
    driver.disconnect("u0")
    await manager.idle()
    assert manager.state_of("u0") is State.GRACE and manager.state_of("u1") is State.ACTIVE
    assert [key for key, _ in fleet.cleaned] == ["u0"]  # claim unverified: cleaned here
    assert manager.stats["store_claims_unverified"] == 1
    assert manager.stats["store_outages"] == 1
    await redis_server.start()
    await settled(manager)
    stored = await fleet.stored()
    assert {k: (r.state, r.user_id) for k, r in stored.items()} == {
        "u0": ("grace", "id-0"),
        **{f"u{n}": ("active", f"id-{n}") for n in range(1, 5)},
    }
    messages = [r.getMessage() for r in caplog.records]
    assert sum("store.unavailable" in m for m in messages) == 1
    assert sum("store.recovered" in m for m in messages) == 1
    assert manager.stats["store_outages"] == 1


@pytest.mark.redis
@pytest.mark.parametrize("fleet_url", ["redis"], indirect=True)
async def test_redis_killed_and_restarted_mid_run(
    redis_server: RedisServer, fleet: Fleet, driver: RoomDriver
) -> None:
    manager = fleet.manager(driver.room, store=fleet.store(timeout=0.3), grace_period=60.0)
    await manager.idle()
    rng = random.Random(3)
    users = [f"u{n}" for n in range(8)]

    async def churn(steps: int) -> None:
        for _ in range(steps):
            user = rng.choice(users)
            if user in driver.room.remote_participants:
                driver.disconnect(user)
            else:
                driver.connect(user, active=True)
                session = manager.get(user)
                assert session is not None
                session.data["n"] = session.data.get("n", 0) + 1
            if rng.random() < 0.3:
                await asyncio.sleep(0.01)

    await churn(100)
    await redis_server.kill()
    await churn(100)  # nothing may escape while the store is gone
    await redis_server.start()
    await churn(50)
    await settled(manager)
    stored = await fleet.stored()
    live = {key: (s.state.value, s.data, s.cleanups) for key, s in manager.sessions.items()}
    assert {k: (r.state, r.data, r.cleanups) for k, r in stored.items()} == live
    assert manager.stats["store_outages"] >= 1 and manager.stats["internal_errors"] == 0


def _with(record: SessionRecord, **changes: Any) -> StoreWrite:
    changed = dataclasses.replace(record, **changes)
    return StoreWrite(changed.room, changed.key, changed, 60.0)


@pytest.mark.redis
async def test_a_manager_attached_before_the_room_connects_restores_once_it_has(
    fleet: Fleet,
) -> None:
    async with RoomDriver(ROOM) as first_room:
        first = fleet.manager(first_room.room)
        await first.idle()
        alice = first_room.connect("alice", active=True)
        first.set_user_id("alice", "u-alice")
        await settled(first)
        crash(first)
    async with RoomDriver(ROOM, connected=False) as second_room:
        second = fleet.manager(second_room.room)  # not connected: nothing to restore yet
        await second.idle()
        assert second.stats["sessions_restored"] == 0
        second_room.join()
        second_room.connect("alice", sid=alice.sid, active=True)  # before the state change
        second_room.connection_state(rtc.ConnectionState.CONN_CONNECTED)
        await until(lambda: second.stats["sessions_restored"] == 1, "the restore")
        session = await second.wait_for("alice", State.ACTIVE, WAIT)
        assert session.user_id == "u-alice" and session.reconnects == 0
        await second.aclose()


@pytest.mark.redis
async def test_a_cleanup_interrupted_by_a_crash_is_taken_over_once_with_a_higher_token(
    fleet: Fleet,
) -> None:
    # Exactly once across a crash mid-cleanup: the first process wins the claim, starts
    # the callbacks and dies; the next one waits for its lease to expire, takes the
    # claim over with a higher token and runs the callbacks, told it is a retry.
    hang = asyncio.Event()
    async with RoomDriver(ROOM) as first_room:
        first_store = fleet.store(lease_ttl=0.5)
        first = fleet.manager(first_room.room, store=first_store, cleanup_timeout=2.0)
        first_claims: list[Any] = []

        @first.add_cleanup
        async def stuck(session: Session) -> None:
            first_claims.append(session.cleanup_claim)
            await hang.wait()  # killed mid-cleanup

        await first.idle()
        alice = first_room.connect("alice", active=True)
        first.set_user_id("alice", "u-alice")
        await settled(first)
        first_room.disconnect("alice")
        await until(lambda: bool(first_claims), "the first cleanup")
        await until_stored(fleet, "alice", "disconnecting")
        crash(first)
        task = first_store._lease_task
        assert task is not None
        task.cancel()  # the process is gone: its lease is no longer refreshed
    (held,) = first_claims
    assert held is not None and not held.retry

    async with RoomDriver(ROOM) as second_room:  # alice left while no process was alive
        second = fleet.manager(None, cleanup_timeout=5.0)
        retried: list[Any] = []
        second.add_cleanup(lambda s: retried.append((s.key, s.sid, s.cleanup_claim)))
        second.attach(second_room.room)
        await until(lambda: bool(retried), "the cleanup taken over", timeout=WAIT)
        await second.idle()
        ((key, sid, claim),) = retried
        assert (key, sid) == ("alice", alice.sid)
        assert claim is not None and claim.retry and claim.token > held.token
        session = second.get("alice")
        assert session is not None and session.user_id == "u-alice"
        assert session.state is State.GRACE
        await second.aclose()
    # SIGKILL would have ended the stuck callback with its process; the in-process stand-in
    # lets it finish on a manager that no longer indexes anything: not checked any more.
    fleet.checkers.pop(0)
    hang.set()
    await first.idle()


@pytest.mark.redis
async def test_a_claim_won_by_a_process_that_died_before_writing_it_is_taken_over(
    fleet: Fleet,
) -> None:
    # Found by the fault-injection suite (seed 1027): the first process won the claim and
    # was killed before its record said `disconnecting` (writes are behind), so the record
    # still shows the connection active. The next process sees a connection that ended
    # while nobody watched; its claim is held by a dead lease: taken over, not lost.
    async with RoomDriver(ROOM) as first_room:
        first_store = fleet.store(lease_ttl=0.5)
        first = fleet.manager(first_room.room, store=first_store)
        await first.idle()
        alice = first_room.connect("alice", active=True)
        first.set_user_id("alice", "u-alice")
        await settled(first)
        assert first._persist is not None
        held = await first_store.claim(ROOM, "alice", alice.sid, first._persist.owner)
        assert held.won
        crash(first)  # before the disconnect was even seen
        task = first_store._lease_task
        assert task is not None
        task.cancel()  # the process is gone: its lease is no longer refreshed
    assert (await fleet.stored())["alice"].state == "active"

    async with RoomDriver(ROOM) as second_room:  # alice left while no process was alive
        second = fleet.manager(None, cleanup_timeout=5.0)
        retried: list[Any] = []
        second.add_cleanup(lambda s: retried.append((s.key, s.sid, s.cleanup_claim)))
        second.attach(second_room.room)
        await until(lambda: bool(retried), "the cleanup taken over", timeout=WAIT)
        await second.idle()
        ((key, sid, claim),) = retried
        assert (key, sid) == ("alice", alice.sid)
        assert claim is not None and claim.retry and claim.token > held.token
        assert second.state_of("alice") is State.GRACE
        assert second.stats["store_claims_lost"] == 0
        await second.aclose()


async def until_stored(fleet: Fleet, key: str, state: str) -> None:
    deadline = time.monotonic() + WAIT
    while (record := (await fleet.stored()).get(key)) is None or record.state != state:
        assert time.monotonic() < deadline, f"{key} never stored as {state}"
        await asyncio.sleep(0.02)


async def test_the_stored_history_is_the_sessions_history_as_it_grows_and_is_capped(
    fleet: Fleet,
) -> None:
    # Each write converts only the new transitions (the rest come from the previous
    # write's): the stored history must still be the session's, oldest dropped.
    async with RoomDriver(ROOM) as driver:
        manager = fleet.manager(driver.room, grace_period=5.0, history_limit=4)
        await manager.idle()
        driver.connect("alice", active=True)
        for _ in range(4):
            driver.refresh("alice")  # disconnect, cleanup, grace, reconnect
            await settled(manager)
            session = manager.get("alice")
            assert session is not None
            stored = (await fleet.stored())["alice"]
            assert list(stored.history) == [t.as_dict() for t in session.history]
            assert len(session.history) == 4  # capped from the first refresh on
