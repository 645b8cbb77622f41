"""The seed's standalone API (``livekit_lifecycle.compat``) against a real rtc.Room.

The first four groups are the seed's own testing checklist (user refresh,
multiple disconnects, reconnection window, graceful shutdown), exercised only
through the seed's functions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, State
from livekit_lifecycle.compat import (
    CleanupHandlers,
    active_sessions,
    get_manager,
    get_session_info,
    graceful_shutdown,
    register_cleanup_handlers,
    update_session_user,
)
from livekit_lifecycle.testing import RoomDriver

REASON = rtc.DisconnectReason
WAIT = 2.0
SHORT = LifecycleConfig(grace_period=0.05)
LONG = LifecycleConfig(grace_period=30.0)
USER = "user-4e3efa3d-d8fe-431e-9a1b-2c3d4e5f6a7b"


class ClearUser:
    """The seed's ``clear_user(user_id)``: records every call."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []

    def __call__(self, user_id: str | None) -> None:
        self.calls.append(user_id)


class Tts:
    """Stands for the application's TTS client: counts closes."""

    def __init__(self) -> None:
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1


@pytest.fixture
async def room(driver: RoomDriver) -> AsyncIterator[rtc.Room]:
    """The driver's room; shut down through the compat API after the test, whatever happened."""
    yield driver.room
    await graceful_shutdown(driver.room)
    assert get_manager(driver.room) is None


def manager_of(room: rtc.Room) -> LifecycleManager:
    manager = get_manager(room)
    assert manager is not None
    return manager


def cleanups_started(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.msg == "cleanup.started"]


def test_compat_needs_no_livekit_agents() -> None:
    code = (
        "import sys\n"
        "import livekit_lifecycle, livekit_lifecycle.compat\n"
        "assert 'livekit.agents' not in sys.modules, 'compat imported livekit.agents'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- checklist: refresh


async def test_user_refresh(
    room: rtc.Room, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    clear = ClearUser()
    handlers = register_cleanup_handlers(room, clear_user_callback=clear, config=LONG)
    assert isinstance(handlers, CleanupHandlers) and handlers.room is room
    before = time.time()
    first = driver.connect(USER, active=True)
    info = get_session_info(first.sid)
    assert info is not None and set(info) == {"user_id", "tracks", "cleanup_done", "connected_at"}
    assert (info["user_id"], info["tracks"], info["cleanup_done"]) == (None, set(), False)
    assert before <= info["connected_at"] <= time.time()
    assert update_session_user(first.sid, USER)
    track = driver.publish_track(USER)
    info = get_session_info(first.sid)
    assert info is not None and info["tracks"] == {track} and info["user_id"] == USER

    driver.disconnect(USER)  # the browser refreshes: the backend detects the disconnect
    await manager_of(room).wait_for(USER, State.GRACE, WAIT)
    assert clear.calls == [None]  # cleanup ran once, and cleared the user
    assert len(cleanups_started(caplog)) == 1
    left = get_session_info(first.sid)
    assert left is not None and left["cleanup_done"] is True and left["tracks"] == set()

    second = driver.connect(USER, active=True)  # the user reconnects without error
    info = get_session_info(second.sid)
    assert info is not None
    assert info["user_id"] == USER and info["cleanup_done"] is False and info["tracks"] == set()
    assert info["connected_at"] >= left["connected_at"]
    assert get_session_info(first.sid) is None
    assert set(active_sessions) == {second.sid}
    assert clear.calls == [None]


# --------------------------------------------------------------------------- checklist: repeats


async def test_multiple_disconnects_clean_up_once(
    room: rtc.Room, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    clear = ClearUser()
    register_cleanup_handlers(room, clear, config=LONG)
    participant = driver.connect("alice", active=True)
    driver.disconnect("alice")
    for _ in range(3):  # the same disconnect, delivered again quickly
        driver.redeliver_disconnect(participant)
    await manager_of(room).wait_for("alice", State.GRACE, WAIT)
    await manager_of(room).idle()
    assert clear.calls == [None]
    assert len(cleanups_started(caplog)) == 1

    again = driver.connect("alice", active=True)  # each connection is cleaned once
    driver.disconnect("alice")
    driver.redeliver_disconnect(again)
    await manager_of(room).wait_for("alice", State.GRACE, WAIT)
    assert clear.calls == [None, None]


# --------------------------------------------------------------------------- checklist: window


async def test_reconnection_inside_the_window_keeps_session_data(
    room: rtc.Room, driver: RoomDriver
) -> None:
    register_cleanup_handlers(room, config=LONG)
    first = driver.connect("alice", active=True)
    update_session_user(first.sid, "user-1")
    driver.disconnect("alice")
    await manager_of(room).wait_for("alice", State.GRACE, WAIT)
    second = driver.connect("alice", active=True)
    info = get_session_info(second.sid)
    assert info is not None and info["user_id"] == "user-1"
    assert manager_of(room).state_of("alice") is State.ACTIVE


async def test_the_window_expires_without_reconnection(room: rtc.Room, driver: RoomDriver) -> None:
    register_cleanup_handlers(room, config=SHORT)
    participant = driver.connect("alice", active=True)
    update_session_user(participant.sid, "user-1")
    driver.disconnect("alice")
    await manager_of(room).wait_for("alice", State.REMOVED, WAIT)
    assert get_session_info(participant.sid) is None
    assert participant.sid not in active_sessions
    fresh = driver.connect("alice", active=True)  # after the window: a fresh session
    info = get_session_info(fresh.sid)
    assert info is not None and info["user_id"] is None


async def test_removed_participants_get_no_window(room: rtc.Room, driver: RoomDriver) -> None:
    register_cleanup_handlers(room, config=LONG)
    participant = driver.connect("alice", active=True)
    driver.disconnect("alice", REASON.PARTICIPANT_REMOVED)
    await manager_of(room).wait_for("alice", State.REMOVED, WAIT)
    assert get_session_info(participant.sid) is None


# --------------------------------------------------------------------------- checklist: shutdown


async def test_graceful_shutdown(
    room: rtc.Room, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    clear = ClearUser()
    tts = Tts()
    register_cleanup_handlers(room, clear, config=LONG)
    alice = driver.connect("alice", active=True)
    driver.publish_track("alice")
    bob = driver.connect("bob")
    driver.connect("carol", active=True)
    driver.disconnect("carol")  # carol is in her window, already cleaned
    await manager_of(room).wait_for("carol", State.GRACE, WAIT)
    assert clear.calls == [None]

    await graceful_shutdown(room, tts, clear_user_callback=clear)
    assert clear.calls == [None, None, None]  # alice and bob now, carol not again
    assert tts.closes == 1
    assert get_session_info(alice.sid) is None and get_session_info(bob.sid) is None
    assert alice.sid not in active_sessions and bob.sid not in active_sessions
    assert get_manager(room) is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    await graceful_shutdown(room, tts, clear_user_callback=clear)  # twice: a no-op
    assert tts.closes == 1 and clear.calls == [None, None, None]


async def test_concurrent_shutdowns_close_once_and_both_wait(
    room: rtc.Room, driver: RoomDriver
) -> None:
    gate = asyncio.Event()
    tts = Tts()

    async def clear(user_id: str | None) -> None:
        await gate.wait()

    manager = register_cleanup_handlers(room, clear, config=LONG).manager
    driver.connect("alice", active=True)
    seen_by_second: list[tuple[int, int]] = []

    async def second_call() -> None:
        await graceful_shutdown(room, tts)
        seen_by_second.append((len(manager.sessions), tts.closes))

    first = asyncio.ensure_future(graceful_shutdown(room, tts))
    second = asyncio.ensure_future(second_call())
    await manager.wait_for("alice", State.DISCONNECTING, WAIT)  # blocked in alice's cleanup
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert seen_by_second == [(0, 1)]  # the second call returned only after the shutdown


async def test_shutdown_callback_given_only_at_shutdown(room: rtc.Room, driver: RoomDriver) -> None:
    register_cleanup_handlers(room, config=LONG)
    driver.connect("alice", active=True)
    clear = ClearUser()
    await graceful_shutdown(room, clear_user_callback=clear)
    assert clear.calls == [None]


async def test_failing_and_async_callbacks_do_not_break_shutdown(
    room: rtc.Room, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str | None] = []

    async def clear(user_id: str | None) -> None:
        await asyncio.sleep(0)
        calls.append(user_id)

    class BrokenTts:
        def close(self) -> None:
            raise RuntimeError("socket already gone")

    register_cleanup_handlers(room, clear, config=LONG)
    driver.connect("alice", active=True)
    await graceful_shutdown(room, BrokenTts())
    assert calls == [None]
    assert [r.msg for r in caplog.records if r.levelno >= logging.ERROR] == [
        "shutdown.resource_failed"
    ]


async def test_shutdown_after_the_room_disconnected(room: rtc.Room, driver: RoomDriver) -> None:
    clear = ClearUser()
    tts = Tts()
    register_cleanup_handlers(room, clear, config=LONG)
    driver.connect("alice", active=True)
    manager = manager_of(room)
    driver.room_disconnected()  # the manager shuts itself down
    await graceful_shutdown(room, tts)
    assert manager.closed and manager.sessions == {}
    assert clear.calls == [None] and tts.closes == 1


async def test_shutdown_of_an_unregistered_room_still_closes_the_tts(
    driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    tts = Tts()
    await graceful_shutdown(driver.room, tts)
    assert tts.closes == 1
    assert [r.msg for r in caplog.records if r.levelno == logging.WARNING] == [
        "compat.shutdown_unregistered"
    ]


# --------------------------------------------------------------------------- the rest of the API


async def test_register_twice_returns_the_same_handlers(room: rtc.Room, driver: RoomDriver) -> None:
    first, second = ClearUser(), ClearUser()
    handlers = register_cleanup_handlers(room, first, config=LONG)
    assert register_cleanup_handlers(room, second) is handlers
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await handlers.manager.wait_for("alice", State.GRACE, WAIT)
    assert (first.calls, second.calls) == ([], [None])


async def test_remove_stops_handling_events(room: rtc.Room, driver: RoomDriver) -> None:
    handlers = register_cleanup_handlers(room, config=LONG)
    handlers.remove()
    participant = driver.connect("alice", active=True)
    assert get_session_info(participant.sid) is None
    assert handlers.manager.sessions == {}


async def test_bad_input(
    room: rtc.Room, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(TypeError, match=r"rtc\.Room"):
        register_cleanup_handlers("room")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        register_cleanup_handlers(room, clear_user_callback="clear")  # type: ignore[arg-type]
    register_cleanup_handlers(room, config=LONG)
    participant = driver.connect("alice")
    with pytest.raises(TypeError, match="user_id"):
        update_session_user(participant.sid, 42)  # type: ignore[arg-type]
    assert update_session_user("PA_unknown", "user-1") is False
    assert [r.msg for r in caplog.records if r.levelno == logging.WARNING] == [
        "compat.unknown_participant"
    ]
    assert get_session_info("PA_unknown") is None
    with pytest.raises(TypeError, match="no aclose"):
        await graceful_shutdown(room, tts=object())
    with pytest.raises(TypeError, match="callable"):
        await graceful_shutdown(room, clear_user_callback="clear")  # type: ignore[arg-type]
    assert get_manager(room) is not None  # nothing was shut down


async def test_active_sessions_is_a_read_only_live_view(room: rtc.Room, driver: RoomDriver) -> None:
    register_cleanup_handlers(room, config=LONG)
    view: Any = active_sessions
    participant = driver.connect("alice", active=True)
    update_session_user(participant.sid, "user-1")
    assert participant.sid in active_sessions
    assert active_sessions[participant.sid]["user_id"] == "user-1"
    with pytest.raises(TypeError):
        view[participant.sid] = {}
    with pytest.raises(TypeError):
        view[participant.sid]["user_id"] = "someone-else"
    with pytest.raises(KeyError):
        active_sessions["PA_unknown"]
    info = get_session_info(participant.sid)
    assert info is not None
    info["user_id"] = "changed"  # a copy: the session is untouched
    assert active_sessions[participant.sid]["user_id"] == "user-1"
    assert "user-1" in repr(active_sessions)


async def test_state_is_kept_per_room(room: rtc.Room, driver: RoomDriver) -> None:
    register_cleanup_handlers(room, config=LONG)
    alice = driver.connect("alice", active=True)
    async with RoomDriver("other-room") as other:
        register_cleanup_handlers(other.room, config=LONG)
        # Server sids are unique across rooms; two drivers count from the same start.
        bob = other.connect("bob", active=True, sid="PA_other_room_bob")
        assert {alice.sid, bob.sid} <= set(active_sessions)
        assert update_session_user(bob.sid, "user-bob")
        await graceful_shutdown(other.room)
        assert bob.sid not in active_sessions
    info = get_session_info(alice.sid)
    assert info is not None and info["cleanup_done"] is False and info["user_id"] is None
    assert manager_of(room).state_of("alice") is State.ACTIVE


async def test_migration_step_two_shuts_down_with_the_job(driver: RoomDriver) -> None:
    """docs/migrating.md, step 2: graceful_shutdown registered as a job shutdown callback."""
    pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
    from livekit.agents.testing import fake_job_context

    clear = ClearUser()
    tts = Tts()
    with fake_job_context(room=driver.room) as ctx:
        register_cleanup_handlers(ctx.room, clear_user_callback=clear, config=LONG)
        ctx.add_shutdown_callback(
            lambda: graceful_shutdown(ctx.room, tts, clear_user_callback=clear)
        )
        participant = driver.connect(f"user-{USER}", active=True)
        update_session_user(participant.sid, USER)
        assert tts.closes == 0 and clear.calls == []  # the entrypoint has returned: still running

        driver.room_disconnected(REASON.CLIENT_INITIATED)  # the runner disconnects the room...
        await asyncio.gather(*(callback("test") for callback in ctx._shutdown_callbacks))
    assert clear.calls == [None] and tts.closes == 1  # ...then runs the shutdown callbacks
    assert get_manager(driver.room) is None


# ------------------------------------------------------------------------ the same callback twice


class SeedAgent:
    """The seed's agent: passes ``self.clear_user`` to both compat functions."""

    def __init__(self) -> None:
        self.cleared: list[str | None] = []
        self.tts = Tts()

    def clear_user(self, user_id: str | None) -> None:
        self.cleared.append(user_id)


def record(calls: list[str | None], user_id: str | None) -> None:
    calls.append(user_id)


def record_into(user_id: str | None, *, calls: list[str | None]) -> None:
    calls.append(user_id)


async def test_seed_usage_with_a_bound_method_clears_once(
    room: rtc.Room, driver: RoomDriver
) -> None:
    agent = SeedAgent()
    register_cleanup_handlers(room, clear_user_callback=agent.clear_user)
    driver.connect("alice", active=True)
    driver.connect("bob", active=True)
    await graceful_shutdown(room, agent.tts, clear_user_callback=agent.clear_user)
    assert agent.cleared == [None, None]  # once per user, not twice
    assert agent.tts.closes == 1


@pytest.mark.parametrize(
    "same",
    [
        pytest.param(lambda calls: (calls.append, calls.append), id="builtin-bound-method"),
        pytest.param(
            lambda calls: (functools.partial(record, calls), functools.partial(record, calls)),
            id="equal-partials",
        ),
        pytest.param(
            lambda calls: (
                functools.partial(record_into, calls=calls),
                functools.partial(record_into, calls=calls),
            ),
            id="equal-partials-by-keyword",
        ),
        pytest.param(
            lambda calls: ((cb := lambda user_id: calls.append(user_id)), cb), id="one-lambda"
        ),
    ],
)
async def test_the_same_callback_passed_twice_runs_once(
    room: rtc.Room, driver: RoomDriver, same: Any
) -> None:
    calls: list[str | None] = []
    at_register, at_shutdown = same(calls)
    register_cleanup_handlers(room, clear_user_callback=at_register)
    driver.connect("alice", active=True)
    await graceful_shutdown(room, clear_user_callback=at_shutdown)
    assert calls == [None]


class Tagged:
    """A callable object whose calls record its tag; equal by value, but two callbacks."""

    def __init__(self, calls: list[str], tag: str) -> None:
        self.calls, self.tag = calls, tag

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tagged) and other.tag == self.tag

    __hash__ = object.__hash__

    def __call__(self, user_id: str | None) -> None:
        self.calls.append(self.tag)

    def clear_user(self, user_id: str | None) -> None:
        self.calls.append(self.tag)


def record_tag(calls: list[str], tag: str, user_id: str | None) -> None:
    calls.append(tag)


@pytest.mark.parametrize(
    "different",
    [
        pytest.param(
            lambda calls: (lambda _: calls.append("a"), lambda _: calls.append("b")),
            id="two-lambdas",
        ),
        pytest.param(
            lambda calls: (
                functools.partial(record_tag, calls, "a"),
                functools.partial(record_tag, calls, "b"),
            ),
            id="partials-with-different-args",
        ),
        pytest.param(
            lambda calls: (Tagged(calls, "a").clear_user, Tagged(calls, "a").clear_user),
            id="methods-of-equal-but-different-objects",
        ),
        pytest.param(
            lambda calls: (Tagged(calls, "a"), Tagged(calls, "a")), id="equal-callable-objects"
        ),
    ],
)
async def test_different_callbacks_passed_to_each_both_run(
    room: rtc.Room, driver: RoomDriver, different: Any
) -> None:
    calls: list[str] = []
    at_register, at_shutdown = different(calls)
    register_cleanup_handlers(room, clear_user_callback=at_register)
    driver.connect("alice", active=True)
    await graceful_shutdown(room, clear_user_callback=at_shutdown)
    assert len(calls) == 2 and set(calls) <= {"a", "b"}


async def test_a_bound_method_tts_is_closed_once_over_two_shutdowns(
    room: rtc.Room, driver: RoomDriver
) -> None:
    agent = SeedAgent()
    register_cleanup_handlers(room, clear_user_callback=agent.clear_user)
    await graceful_shutdown(room, agent.tts.aclose, clear_user_callback=agent.clear_user)
    await graceful_shutdown(room, agent.tts.aclose, clear_user_callback=agent.clear_user)
    assert agent.tts.closes == 1
