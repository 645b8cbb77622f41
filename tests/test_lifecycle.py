"""The numbered semantics of the core lifecycle, each against a real rtc.Room."""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State
from livekit_lifecycle._events import InputKind
from livekit_lifecycle._view import InternalView
from livekit_lifecycle.testing import RoomDriver
from tests.conftest import MakeManager, gate_cleanup, path

REASON = rtc.DisconnectReason
WAIT = 2.0


# --------------------------------------------------------------------------- rule 1


async def test_connect_creates_a_connecting_session(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager()
    participant = driver.connect("alice")
    session = manager.get("alice")
    assert session is not None
    assert session.state is State.CONNECTING
    assert (session.key, session.identity, session.sid) == ("alice", "alice", participant.sid)
    assert session.user_id is None and session.tracks == frozenset() and session.history == ()
    assert manager.by_sid(participant.sid) is session


async def test_participant_active_activates(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = make_manager()
    driver.connect("alice")
    driver.activate("alice")
    session = manager.get("alice")
    assert session is not None and session.state is State.ACTIVE
    assert path(session) == [("connecting", "activate", "active")]


async def test_first_track_published_activates(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager()
    driver.connect("alice")
    track = driver.publish_track("alice")
    second = driver.publish_track("alice", kind=rtc.TrackKind.KIND_VIDEO)
    session = manager.get("alice")
    assert session is not None and session.state is State.ACTIVE
    assert session.tracks == {track, second}
    assert path(session) == [("connecting", "publish_track", "active")]
    driver.unpublish_track("alice", track)
    assert session.tracks == {second}


async def test_attach_reconciles_participants_already_in_the_room(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    driver.connect("joining")
    driver.connect("active", active=True)
    driver.connect("publishing")
    track = driver.publish_track("publishing")
    manager = make_manager()
    assert manager.state_of("joining") is State.CONNECTING
    assert manager.state_of("active") is State.ACTIVE
    assert manager.state_of("publishing") is State.ACTIVE
    publishing = manager.get("publishing")
    assert publishing is not None and publishing.tracks == {track}


# --------------------------------------------------------------------------- rule 2


async def test_disconnect_cleans_once_then_grace_then_removed(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=0.05)
    seen: list[tuple[State, frozenset[str], rtc.RemoteParticipant | None]] = []
    manager.add_cleanup(lambda s: seen.append((s.state, s.tracks, s.participant)))
    participant = driver.connect("alice", active=True)
    track = driver.publish_track("alice")
    driver.disconnect("alice", REASON.CLIENT_INITIATED)
    session = await manager.wait_for("alice", State.GRACE, WAIT)
    # Cleanup saw the connection as it was; afterwards only our references are gone.
    assert seen == [(State.DISCONNECTING, frozenset({track}), participant)]
    assert session.cleanups == 1 and session.tracks == frozenset() and session.participant is None
    assert session.disconnect_reason == REASON.CLIENT_INITIATED
    assert session.disconnected_at is not None
    await manager.wait_for("alice", State.REMOVED, WAIT)
    assert manager.get("alice") is None and manager.by_sid(participant.sid) is None
    assert path(session) == [
        ("connecting", "activate", "active"),
        ("active", "disconnect", "disconnecting"),
        ("disconnecting", "cleanup_done", "cleaned"),
        ("cleaned", "hold", "grace"),
        ("grace", "expire", "removed"),
    ]


async def test_disconnect_while_connecting_is_cleaned_too(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    driver.connect("alice")
    driver.disconnect("alice")
    session = await manager.wait_for("alice", State.GRACE, WAIT)
    assert session.cleanups == 1
    assert path(session)[0] == ("connecting", "disconnect", "disconnecting")


@pytest.mark.parametrize(
    "reason",
    [REASON.PARTICIPANT_REMOVED, REASON.ROOM_DELETED, REASON.ROOM_CLOSED, REASON.USER_REJECTED],
)
async def test_no_grace_reasons_remove_at_once(
    make_manager: MakeManager, driver: RoomDriver, reason: int
) -> None:
    manager = make_manager(grace_period=30)
    calls: list[str] = []
    manager.add_cleanup(lambda s: calls.append(s.sid))
    driver.connect("alice", active=True)
    driver.disconnect("alice", reason)
    session = await manager.wait_for("alice", State.REMOVED, WAIT)
    assert len(calls) == 1 and session.cleanups == 1
    assert path(session)[-2:] == [
        ("disconnecting", "cleanup_done", "cleaned"),
        ("cleaned", "release", "removed"),
    ]


async def test_zero_grace_period_removes_at_once(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=0)
    driver.connect("alice", active=True)
    driver.disconnect("alice", REASON.CLIENT_INITIATED)
    session = await manager.wait_for("alice", State.REMOVED, WAIT)
    assert path(session)[-1] == ("cleaned", "release", "removed")


async def test_failing_and_hanging_cleanups_do_not_stop_the_lifecycle(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager(grace_period=30, cleanup_timeout=0.05)
    ran: list[str] = []

    def failing(session: Session) -> None:
        raise RuntimeError("transcript store down")

    async def hanging(session: Session) -> None:
        await asyncio.Event().wait()

    async def self_cancelling(session: Session) -> None:
        raise asyncio.CancelledError

    manager.add_cleanup(failing)
    manager.add_cleanup(hanging)
    manager.add_cleanup(self_cancelling)
    manager.add_cleanup(lambda s: ran.append("last"))
    driver.connect("alice", active=True)
    caplog.set_level("WARNING", logger="livekit_lifecycle")
    driver.disconnect("alice")
    session = await manager.wait_for("alice", State.GRACE, WAIT)
    assert ran == ["last"] and session.cleanups == 1
    stats = manager.stats
    assert stats["callback_errors"] == 2 and stats["callback_timeouts"] == 1
    failed = [r for r in caplog.records if r.msg == "cleanup.failed"]
    assert len(failed) == 2
    assert {r.__dict__["key"] for r in failed} == {"alice"}
    assert "transcript store down" in failed[0].__dict__["error"]
    timeouts = [r for r in caplog.records if r.msg == "cleanup.timeout"]
    assert len(timeouts) == 1 and "hanging" in timeouts[0].__dict__["callback"]


# --------------------------------------------------------------------------- rule 3


async def test_repeated_disconnects_are_no_ops(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    calls: list[str] = []
    manager.add_cleanup(lambda s: calls.append(s.sid))
    participant = driver.connect("alice", active=True)
    driver.disconnect("alice")
    for _ in range(5):
        driver.redeliver_disconnect(participant)  # while disconnecting (queued) ...
    session = await manager.wait_for("alice", State.GRACE, WAIT)
    driver.redeliver_disconnect(participant)  # ... and once in grace
    await manager.idle()
    assert calls == [participant.sid] and session.cleanups == 1
    assert manager.stats["ignored_duplicate"] == 6
    assert session.state is State.GRACE


async def test_a_repeated_unpublish_changes_nothing(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager()
    participant = driver.connect("alice", active=True)
    kept = driver.publish_track("alice")
    gone = driver.publish_track("alice")
    publication = driver.unpublish_track("alice", gone)
    assert publication is not None and publication.sid == gone
    session = manager.get("alice")
    assert session is not None and session.tracks == frozenset({kept})
    for _ in range(3):
        driver.redeliver_unpublish(publication, participant)
    assert session.state is State.ACTIVE and session.tracks == frozenset({kept})
    assert driver.unpublish_track("alice", "TR_never_published") is None


async def test_stale_events_from_an_old_connection_are_ignored(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="livekit_lifecycle")
    manager = make_manager(grace_period=30)
    old = driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    new = driver.connect("alice", active=True)
    session = await manager.wait_for("alice", State.ACTIVE, WAIT)
    driver.redeliver_disconnect(old)  # the old page's disconnect, late
    driver.room.emit(
        "track_published", rtc.RemoteTrackPublication.__new__(rtc.RemoteTrackPublication), old
    )
    await manager.idle()
    assert session.state is State.ACTIVE and session.sid == new.sid and session.cleanups == 1
    assert manager.stats["ignored_stale"] == 1
    ignored = [r for r in caplog.records if r.msg == "event.ignored"]
    assert ignored and all("current" in r.__dict__["why"] for r in ignored)
    assert {r.__dict__["event_sid"] for r in ignored} == {old.sid}


# --------------------------------------------------------------------------- rule 4


async def test_reconnect_inside_the_window_keeps_the_session(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    reconnected: list[Session] = []
    manager.on("reconnected", reconnected.append)
    driver.connect("alice", active=True)
    old_track = driver.publish_track("alice")
    manager.set_user_id("alice", "user-42")
    session = manager.get("alice")
    assert session is not None
    session.data["transcript"] = ["hello"]
    new = driver.refresh("alice")  # CLIENT_INITIATED leave, then the same identity joins again
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    assert manager.get("alice") is session and reconnected == [session]
    assert session.user_id == "user-42" and session.data == {"transcript": ["hello"]}
    assert session.sid == new.sid and session.participant is new
    assert old_track not in session.tracks and session.tracks == frozenset()
    assert (session.reconnects, session.cleanups, session.connections) == (1, 1, 2)
    assert session.disconnected_at is None and session.disconnect_reason is None
    assert InternalView(manager).timers(session) == ()  # the invariant behind the next test
    # The reconnect was queued behind the cleanup; by the time it ran, the SDK
    # had already marked the new participant ACTIVE, so resume goes straight there.
    assert path(session)[-3:] == [
        ("cleaned", "hold", "grace"),
        ("grace", "reconnect", "reconnected"),
        ("reconnected", "resume", "active"),
    ]


async def test_reconnect_cancels_the_grace_timer(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=0.05)
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    driver.connect("alice", active=True)
    # Bob's window opens after alice's old one, so it closes after it would have fired.
    driver.connect("bob", active=True)
    driver.disconnect("bob")
    await manager.wait_for("bob", State.REMOVED, WAIT)
    assert manager.state_of("alice") is State.ACTIVE


async def test_reconnect_as_already_active_participant_goes_straight_to_active(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    # The agent's full reconnect delivers participants that are already ACTIVE.
    driver.full_reconnect()  # alice is gone, so this is a no-op for her ...
    driver.connect("carol", active=True)
    driver.full_reconnect()  # ... carol comes back with her sid, already active
    carol = await manager.wait_for("carol", State.ACTIVE, WAIT)
    assert ("reconnected", "resume", "active") in path(carol)
    assert carol.reconnects == 1 and carol.cleanups == 1


async def test_a_reconnect_never_cancels_a_running_cleanup(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    release = gate_cleanup(manager)
    finished: list[str] = []
    manager.add_cleanup(lambda session: finished.append(session.sid))
    old = driver.connect("alice", active=True)
    driver.disconnect("alice")
    driver.connect("alice", active=True)  # the refreshed page is back before cleanup ended
    session = manager.get("alice")
    assert session is not None and session.state is State.DISCONNECTING
    release.set()
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    assert finished == [old.sid] and session.cleanups == 1 and session.reconnects == 1
    assert [t.trigger for t in session.history][1:4] == ["disconnect", "cleanup_done", "hold"]


# --------------------------------------------------------------------------- rule 5


def _user_of(participant: rtc.RemoteParticipant) -> str:
    return participant.attributes["user"]


async def test_takeover_cleans_the_old_connection_once_and_rebinds(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30, session_key=_user_of)
    calls: list[str] = []
    manager.add_cleanup(lambda s: calls.append(s.sid))
    first = driver.connect("tab-1", active=True, attributes={"user": "u-1"})
    first_track = driver.publish_track("tab-1")
    manager.set_user_id("u-1", "user-1")
    second = driver.connect("tab-2", active=True, attributes={"user": "u-1"})
    session = await manager.wait_for("u-1", State.ACTIVE, WAIT)
    assert calls == [first.sid]
    assert (session.sid, session.identity, session.user_id) == (second.sid, "tab-2", "user-1")
    assert session.reconnects == 1 and session.cleanups == 1
    assert [t.trigger for t in session.history] == [
        "activate",
        "takeover",
        "cleanup_done",
        "rejoin",
        "resume",
    ]
    # We dropped our reference only: the SDK still owns the old tab's publication.
    assert first_track in driver.room.remote_participants["tab-1"].track_publications
    driver.publish_track("tab-1")  # the old tab is still there: its events are stale
    driver.disconnect("tab-1")  # and its disconnect arrives late
    await manager.idle()
    assert session.state is State.ACTIVE and calls == [first.sid]
    assert session.tracks == frozenset() and manager.stats["ignored_stale"] == 2


# --------------------------------------------------------------------------- rule 6


async def test_after_removal_the_same_key_starts_fresh(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=0.02)
    driver.connect("alice", active=True)
    manager.set_user_id("alice", "user-1")
    driver.disconnect("alice")
    old = await manager.wait_for("alice", State.REMOVED, WAIT)
    driver.connect("alice", active=True)
    fresh = manager.get("alice")
    assert fresh is not None and fresh is not old
    assert fresh.user_id is None and fresh.reconnects == 0 and fresh.data == {}
    assert fresh.state is State.ACTIVE


async def test_connect_queued_behind_a_no_grace_cleanup_starts_fresh(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    release = gate_cleanup(manager)
    driver.connect("alice", active=True)
    manager.set_user_id("alice", "user-1")
    driver.disconnect("alice", REASON.PARTICIPANT_REMOVED)
    driver.connect("alice", active=True)
    release.set()
    await manager.idle()
    fresh = manager.get("alice")
    assert fresh is not None and fresh.user_id is None and fresh.state is State.ACTIVE


# --------------------------------------------------------------------------- rule 7


async def test_full_reconnect_of_the_agent_keeps_every_user(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    for name in ("alice", "bob"):
        driver.connect(name, active=True)
        driver.publish_track(name)
        manager.set_user_id(name, f"user-{name}")
    driver.full_reconnect()
    for name in ("alice", "bob"):
        session = await manager.wait_for(name, State.ACTIVE, WAIT)
        assert session.user_id == f"user-{name}" and session.reconnects == 1
        assert len(session.tracks) == 1 and session.cleanups == 1


async def test_room_reconnected_reconciles_missing_participants(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    driver.connect("alice", active=True)
    driver.connect("bob", active=True)
    manager.detach()
    driver.disconnect("bob")  # missed while detached, like a lost update
    manager.attach(driver.room)
    await manager.wait_for("bob", State.GRACE, WAIT)
    assert manager.state_of("alice") is State.ACTIVE
    driver.reconnecting()
    driver.reconnected()
    await manager.idle()
    assert manager.state_of("alice") is State.ACTIVE


async def test_resume_without_participant_events_changes_nothing(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    driver.connect("alice", active=True)
    track = driver.publish_track("alice")
    driver.reconnecting()
    driver.reconnected()
    await manager.idle()
    session = manager.get("alice")
    assert session is not None and session.state is State.ACTIVE and session.tracks == {track}
    assert session.cleanups == 0 and len(session.history) == 1


async def test_room_disconnected_shuts_the_manager_down(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    cleaned: list[str] = []
    manager.add_cleanup(lambda s: cleaned.append(s.key))
    driver.connect("alice", active=True)
    driver.room_disconnected(REASON.ROOM_DELETED)
    assert manager._close_task is not None
    await asyncio.wait_for(manager._close_task, WAIT)
    assert manager.closed and manager.sessions == {} and cleaned == ["alice"]


async def test_room_disconnected_can_be_left_to_the_application(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30, close_on_room_disconnect=False)
    driver.connect("alice", active=True)
    driver.room_disconnected()
    await manager.idle()
    assert not manager.closed and manager.state_of("alice") is State.ACTIVE


# --------------------------------------------------------------------------- rule 8


async def test_a_slow_cleanup_never_delays_another_user(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    release = gate_cleanup(manager, "alice")
    driver.connect("alice", active=True)
    driver.connect("bob", active=True)
    driver.disconnect("alice")
    driver.disconnect("bob")
    await manager.wait_for("bob", State.GRACE, WAIT)
    driver.connect("carol")
    driver.activate("carol")
    assert manager.state_of("carol") is State.ACTIVE  # synchronously, no await needed
    assert manager.state_of("alice") is State.DISCONNECTING
    release.set()
    await manager.wait_for("alice", State.GRACE, WAIT)


async def test_events_of_one_session_are_processed_in_order(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    release = gate_cleanup(manager)
    driver.connect("alice", active=True)
    for _ in range(3):  # three refreshes while the first cleanup is still running
        driver.refresh("alice")
    release.set()
    await manager.idle()
    session = manager.get("alice")
    assert session is not None and session.state is State.ACTIVE
    assert session.cleanups == 3 and session.reconnects == 3
    assert session.sid == driver.room.remote_participants["alice"].sid


# --------------------------------------------------------------------------- rule 9


async def test_aclose_cleans_every_session_once_concurrently_then_closes_resources(
    driver: RoomDriver,
) -> None:
    manager = LifecycleManager(LifecycleConfig(grace_period=30))
    manager.attach(driver.room)
    started: list[str] = []
    both_started = asyncio.Event()
    order: list[str] = []

    async def cleanup(session: Session) -> None:
        if not manager.closed:
            return
        started.append(session.key)
        if len(started) == 2:
            both_started.set()
        await both_started.wait()  # deadlocks unless shutdown cleans concurrently

    class AsyncTTS:
        async def aclose(self) -> None:
            order.append("tts")

    class SyncClient:
        def close(self) -> None:
            order.append("client")

    class Broken:
        def close(self) -> None:
            raise OSError("already closed")

    manager.add_cleanup(cleanup)
    manager.add_resource(AsyncTTS(), name="tts")
    manager.add_resource(Broken())
    manager.add_resource(SyncClient())
    manager.add_resource(lambda: order.append("callable"))
    driver.connect("alice", active=True)
    driver.connect("bob", active=True)
    driver.connect("carol", active=True)
    driver.disconnect("carol")
    carol = await manager.wait_for("carol", State.GRACE, WAIT)
    assert carol.cleanups == 1
    removed: list[str] = []
    manager.on("removed", lambda s: removed.append(s.key))
    await asyncio.wait_for(manager.aclose(), WAIT)
    assert sorted(started) == ["alice", "bob"]  # carol is not cleaned twice
    assert sorted(removed) == ["alice", "bob", "carol"]
    assert order == ["callable", "client", "tts"]
    assert manager.sessions == {} and manager.stats["callback_errors"] == 1
    await manager.aclose()  # idempotent
    assert order == ["callable", "client", "tts"]


async def test_aclose_is_bounded_by_shutdown_timeout(
    driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    manager = LifecycleManager(LifecycleConfig(cleanup_timeout=60, shutdown_timeout=0.1))
    manager.attach(driver.room)
    closed: list[str] = []

    async def hang(session: Session) -> None:
        await asyncio.Event().wait()

    manager.add_cleanup(hang)
    manager.add_resource(lambda: closed.append("tts"))
    driver.connect("alice", active=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await manager.aclose()
    assert loop.time() - started < 1.0
    assert manager.sessions == {} and closed == ["tts"]
    assert manager.stats["callback_timeouts"] == 1


async def test_concurrent_aclose_calls_share_one_shutdown(driver: RoomDriver) -> None:
    manager = LifecycleManager()
    manager.attach(driver.room)
    closes: list[int] = []
    manager.add_resource(lambda: closes.append(1))
    driver.connect("alice", active=True)
    await asyncio.gather(*(manager.aclose() for _ in range(5)))
    assert closes == [1] and manager.sessions == {}


async def test_events_after_shutdown_are_ignored(driver: RoomDriver) -> None:
    async with LifecycleManager() as manager:
        manager.attach(driver.room)
    room_handlers_left = sum(len(v) for v in driver.room._events.values())
    assert room_handlers_left == 0
    driver.room.on(
        "participant_connected", lambda p: manager._intake.submit(InputKind.CONNECTED, p)
    )
    driver.connect("alice")
    assert manager.sessions == {} and manager.stats["ignored_after_close"] == 1
    with pytest.raises(RuntimeError, match="closed"):
        manager.attach(driver.room)
    with pytest.raises(RuntimeError, match="closed"):
        manager.add_resource(lambda: None)


async def test_room_events_with_arguments_a_newer_sdk_might_add_are_handled(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=0)
    # A participant object from another room: emitted below by hand, with one argument more.
    async with RoomDriver("elsewhere") as elsewhere:
        alice = elsewhere.connect("alice", active=True)
        driver.room.emit("participant_connected", alice, "a future argument")
        assert manager.state_of("alice") is State.ACTIVE
        driver.room.emit("participant_disconnected", alice, "a future argument")
        session = await manager.wait_for("alice", State.REMOVED, WAIT)
    assert path(session) == [
        ("connecting", "activate", "active"),
        ("active", "disconnect", "disconnecting"),
        ("disconnecting", "cleanup_done", "cleaned"),
        ("cleaned", "release", "removed"),
    ]


async def test_grace_sessions_are_removed_at_shutdown_without_a_second_cleanup(
    driver: RoomDriver,
) -> None:
    manager = LifecycleManager(LifecycleConfig(grace_period=30))
    manager.attach(driver.room)
    calls: list[str] = []
    manager.add_cleanup(lambda s: calls.append(s.key))
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    session = await manager.wait_for("alice", State.GRACE, WAIT)
    await manager.aclose()
    assert calls == ["alice"] and session.state is State.REMOVED
    assert path(session)[-1] == ("grace", "shutdown", "removed")


# --------------------------------------------------------------------------- inspection


async def test_snapshot_is_json_serialisable(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = make_manager(grace_period=30)
    driver.connect("alice", active=True)
    track = driver.publish_track("alice")
    manager.set_user_id("alice", "user-1")
    driver.connect("bob")
    driver.disconnect("bob", REASON.CLIENT_INITIATED)
    await manager.wait_for("bob", State.GRACE, WAIT)
    snapshot = json.loads(json.dumps(manager.snapshot()))
    assert set(snapshot) == {"alice", "bob"}
    alice = snapshot["alice"]
    assert alice["state"] == "active" and alice["user_id"] == "user-1"
    assert alice["tracks"] == [track] and alice["reconnects"] == 0 and alice["cleanups"] == 0
    assert alice["history"] == [
        {
            "source": "connecting",
            "dest": "active",
            "trigger": "activate",
            "sid": alice["sid"],
            "at": alice["history"][0]["at"],
        }
    ]
    assert snapshot["bob"]["disconnect_reason"] == "CLIENT_INITIATED"
    assert snapshot["bob"]["state"] == "grace" and snapshot["bob"]["cleanups"] == 1


async def test_history_is_bounded(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = make_manager(grace_period=30, history_limit=3)
    driver.connect("alice", active=True)
    for _ in range(3):
        driver.refresh("alice")
    await manager.idle()
    session = manager.get("alice")
    assert session is not None and len(session.history) == 3
    assert session.history[-1].dest is State.ACTIVE and session.reconnects == 3


async def test_sessions_is_a_live_read_only_view(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=0)
    view = manager.sessions
    driver.connect("alice")
    assert list(view) == ["alice"]
    with pytest.raises(TypeError):
        view["bob"] = view["alice"]  # type: ignore[index]
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    assert "alice" not in view


async def test_wait_for_times_out_with_a_clear_error(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager()
    driver.connect("alice")
    with pytest.raises(TimeoutError, match=r"'alice' did not reach active.*connecting"):
        await manager.wait_for("alice", State.ACTIVE, timeout=0.01)
    with pytest.raises(ValueError, match="nowhere"):
        await manager.wait_for("alice", "nowhere", timeout=0.01)
    assert await manager.wait_for("alice", "connecting") is manager.get("alice")
    assert InternalView(manager).waiter_count == 0


async def test_attach_before_connect_adopts_who_was_already_there() -> None:
    async with RoomDriver(connected=False) as driver:
        manager = LifecycleManager()
        manager.attach(driver.room)
        driver.join("alice")  # Room.connect(): alice is created without an event
        assert manager.get("alice") is None
        driver.connect("bob")  # the first event after connecting catches up
        assert manager.state_of("alice") is State.ACTIVE
        assert manager.state_of("bob") is State.CONNECTING
        await manager.aclose()


async def test_connection_state_connected_adopts_who_was_already_there() -> None:
    async with RoomDriver(connected=False) as driver:
        manager = LifecycleManager()
        manager.attach(driver.room)
        driver.join("alice", active=False)
        driver.connection_state(rtc.ConnectionState.CONN_CONNECTED)
        assert manager.state_of("alice") is State.CONNECTING
        driver.disconnect("alice")
        await manager.wait_for("alice", State.GRACE, WAIT)
        await manager.aclose()
