"""The LoopbackServer seen by the real SDK: what ``rtc.Room`` objects connected to it observe."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

import aiohttp
from livekit import rtc
from livekit.rtc._proto.room_pb2 import SimulateScenarioKind

from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT, Recorder, needs_network

pytestmark = pytest.mark.e2e

REASON = rtc.DisconnectReason
ROOM = "room"
LOGGER = "livekit_loopback"
# The SDK's resume waits a few seconds for its PeerConnection to settle.
RESUME_WAIT = 20.0


def _options(single_pc: bool) -> rtc.RoomOptions:
    return rtc.RoomOptions(single_peer_connection=single_pc)


@pytest.fixture
async def microphone() -> AsyncIterator[rtc.LocalAudioTrack]:
    source = rtc.AudioSource(48000, 1)
    try:
        yield rtc.LocalAudioTrack.create_audio_track("microphone", source)
    finally:
        await source.aclose()


@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-v0"])
async def test_join_then_active_reach_the_room(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)

    user = await loopback_server.connect("alice", ROOM, options=_options(single_pc))

    joined = await events.wait_for("participant_connected", identity="alice")
    await events.wait_for("participant_active", identity="alice")
    assert joined.sid == user.local_participant.sid and joined.sid.startswith("PA_")
    assert list(user.remote_participants) == ["observer"]  # from the JoinResponse
    assert user.name == ROOM and user.connection_state == rtc.ConnectionState.CONN_CONNECTED
    view = await loopback_server.wait_for_participant(ROOM, "alice", "active", timeout=WAIT)
    assert view is not None and view.sid == joined.sid and view.signal_connected
    assert [p.identity for p in loopback_server.participants(ROOM)] == ["observer", "alice"]
    assert loopback_server.rooms == (ROOM,)


@pytest.mark.loopback(single_pc=False)
async def test_client_falls_back_to_rtc_when_v1_is_absent(
    loopback_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    await loopback_server.connect("alice", ROOM, options=_options(True))
    await loopback_server.wait_for_participant(ROOM, "alice", "active", timeout=WAIT)
    joined = [r for r in caplog.records if r.msg == "participant.joined"]
    assert [r.__dict__["protocol"] for r in joined] == ["v0"]


async def test_bad_credentials_are_refused(loopback_server: LoopbackServer) -> None:
    impostor = LoopbackServer(api_key=loopback_server.api_key, api_secret="x" * 32)
    token = impostor.token("mallory", ROOM)
    room = rtc.Room()
    with pytest.raises(rtc.ConnectError):
        await asyncio.wait_for(room.connect(loopback_server.url, token), WAIT)
    assert loopback_server.participants(ROOM) == []
    http_url = loopback_server.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{http_url}/rtc/validate", headers=headers) as response:
            assert response.status == 401
            assert "invalid access token" in await response.text()
        good = {"Authorization": f"Bearer {loopback_server.token('alice', ROOM)}"}
        async with http.get(f"{http_url}/rtc/validate", headers=good) as response:
            assert (response.status, await response.text()) == (200, "success")
        async with http.get(f"{http_url}/rtc/v1", headers=good) as response:
            assert response.status == 400  # no join_request
        async with http.get(f"{http_url}/twirp/livekit.RoomService/ListRooms") as response:
            assert response.status == 404


async def test_tracks_published_muted_and_unpublished_reach_the_room(
    loopback_server: LoopbackServer, microphone: rtc.LocalAudioTrack
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    user = await loopback_server.connect("alice", ROOM)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)

    publication = await user.local_participant.publish_track(microphone, options)
    published = await events.wait_for("track_published", track=publication.sid)
    assert publication.sid.startswith("TR_") and published.identity == "alice"
    remote = observer.remote_participants["alice"].track_publications[publication.sid]
    assert remote.kind == rtc.TrackKind.KIND_AUDIO and remote.name == "microphone"
    assert remote.source == rtc.TrackSource.SOURCE_MICROPHONE

    microphone.mute()
    await events.wait_for("track_muted", track=publication.sid)
    microphone.unmute()
    await events.wait_for("track_unmuted", track=publication.sid)

    await user.local_participant.unpublish_track(publication.sid)
    await events.wait_for("track_unpublished", track=publication.sid)
    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.tracks == ()


async def test_same_identity_replaces_the_connected_participant(
    loopback_server: LoopbackServer,
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    first = await loopback_server.connect("alice", ROOM)
    first_events = Recorder.on(first)
    old_sid = first.local_participant.sid

    second = await loopback_server.connect("alice", ROOM)

    assert (await first_events.wait_for("disconnected")).reason == REASON.DUPLICATE_IDENTITY
    gone = await events.wait_for("participant_disconnected", identity="alice")
    back = await events.wait_for("participant_connected", sid=second.local_participant.sid)
    assert (gone.sid, gone.reason) == (old_sid, REASON.DUPLICATE_IDENTITY)
    assert events.events.index(gone) < events.events.index(back)
    assert [p.sid for p in loopback_server.participants(ROOM)][1:] == [second.local_participant.sid]


async def test_remove_participant(loopback_server: LoopbackServer) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    user = await loopback_server.connect("alice", ROOM)
    user_events = Recorder.on(user)

    await loopback_server.remove_participant(ROOM, "alice")

    assert (await user_events.wait_for("disconnected")).reason == REASON.PARTICIPANT_REMOVED
    gone = await events.wait_for("participant_disconnected", identity="alice")
    assert gone.reason == REASON.PARTICIPANT_REMOVED
    assert loopback_server.participant(ROOM, "alice") is None
    with pytest.raises(LookupError, match="alice"):
        await loopback_server.remove_participant(ROOM, "alice")
    with pytest.raises(LookupError, match="no room named 'elsewhere'"):
        await loopback_server.remove_participant("elsewhere", "alice")


async def test_close_room(loopback_server: LoopbackServer) -> None:
    rooms = [await loopback_server.connect(name, ROOM) for name in ("first", "second")]
    elsewhere = await loopback_server.connect("carol", "other-room")
    events = [Recorder.on(room) for room in rooms]

    await loopback_server.close_room(ROOM)

    for recorder in events:
        assert (await recorder.wait_for("disconnected")).reason == REASON.ROOM_DELETED
    # Removed in join order: the second participant heard the first one leave.
    gone = await events[1].wait_for("participant_disconnected", identity="first")
    assert gone.reason == REASON.ROOM_DELETED
    assert loopback_server.rooms == ("other-room",)
    assert elsewhere.connection_state == rtc.ConnectionState.CONN_CONNECTED
    with pytest.raises(LookupError, match="no room named"):
        await loopback_server.close_room(ROOM)


@pytest.mark.loopback(leave_timeout=1.0)
async def test_drop_signal_keeps_the_participant_until_the_leave_timeout(
    loopback_server: LoopbackServer,
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    user = await loopback_server.connect("alice", ROOM)
    user_events = Recorder.on(user)
    sid = user.local_participant.sid
    loop = asyncio.get_running_loop()

    dropped_at = loop.time()
    await loopback_server.drop_signal("alice")

    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.sid == sid and not view.signal_connected
    # The dead client's SDK tries to resume, is refused, and gives up.
    assert (await user_events.wait_for("disconnected")).reason == REASON.SIGNAL_CLOSE
    gone = await events.wait_for("participant_disconnected", identity="alice")
    assert loop.time() - dropped_at >= 1.0
    assert (gone.sid, gone.reason) == (sid, REASON.SIGNAL_CLOSE)
    assert loopback_server.participant(ROOM, "alice") is None
    assert [e.sid for e in events.named("participant_connected")] == [sid]  # no comeback


async def test_drop_signal_needs_an_unambiguous_participant(
    loopback_server: LoopbackServer,
) -> None:
    await loopback_server.connect("alice", ROOM)
    await loopback_server.connect("alice", "other-room")
    with pytest.raises(LookupError, match="is in 2 rooms"):
        await loopback_server.drop_signal("alice")
    with pytest.raises(LookupError, match="is in 0 rooms"):
        await loopback_server.drop_signal("nobody")
    with pytest.raises(ValueError, match="leave_timeout"):
        await loopback_server.drop_signal("alice", ROOM, leave_timeout=-1)


@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-v0"])
async def test_resume_keeps_the_participant(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    user = await loopback_server.connect("alice", ROOM, options=_options(single_pc))
    user_events = Recorder.on(user)
    await events.wait_for("participant_active", identity="alice")
    seen_before = list(events.events)

    await user.simulate_scenario(SimulateScenarioKind.SIMULATE_SIGNAL_RECONNECT)
    await user_events.wait_for("reconnected", timeout=RESUME_WAIT)

    # Same participant, nothing for the room to hear; the resumed client got
    # a full snapshot, so it did not make up a disconnect for the observer.
    assert events.events == seen_before
    assert user_events.named("participant_disconnected") == []
    assert list(user.remote_participants) == ["observer"]
    view = loopback_server.participant(ROOM, "alice")
    assert view is not None and view.sid == user.local_participant.sid and view.signal_connected


async def test_client_full_reconnect_is_a_new_participant(
    loopback_server: LoopbackServer,
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    user = await loopback_server.connect("alice", ROOM)
    user_events = Recorder.on(user)
    old_sid = user.local_participant.sid

    await user.simulate_scenario(SimulateScenarioKind.SIMULATE_FULL_RECONNECT)
    await user_events.wait_for("reconnected", timeout=RESUME_WAIT)

    gone = await events.wait_for("participant_disconnected", identity="alice")
    view = await loopback_server.wait_for_participant(ROOM, "alice", "active", timeout=WAIT)
    assert view is not None and view.sid != old_sid
    back = await events.wait_for("participant_connected", sid=view.sid)
    assert gone.sid == old_sid and events.events.index(gone) < events.events.index(back)


async def test_hidden_participants_are_invisible(loopback_server: LoopbackServer) -> None:
    user = await loopback_server.connect("alice", ROOM)
    events = Recorder.on(user)
    watcher = await loopback_server.connect("watcher", ROOM, hidden=True)
    await loopback_server.connect("bob", ROOM)

    await events.wait_for("participant_connected", identity="bob")
    assert "watcher" not in user.remote_participants
    assert sorted(watcher.remote_participants) == ["alice", "bob"]
    assert [e.identity for e in events.named("participant_connected")] == ["bob"]
    view = loopback_server.participant(ROOM, "watcher")
    assert view is not None and view.hidden


async def test_attributes_change_only_with_the_grant(loopback_server: LoopbackServer) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    allowed = await loopback_server.connect("alice", ROOM, can_update_own_metadata=True)
    refused = await loopback_server.connect("bob", ROOM)

    await allowed.local_participant.set_attributes({"user": "42"})
    await refused.local_participant.set_attributes({"user": "43"})

    await events.wait_for("participant_attributes_changed", identity="alice")
    assert observer.remote_participants["alice"].attributes == {"user": "42"}
    alice = loopback_server.participant(ROOM, "alice")
    bob = loopback_server.participant(ROOM, "bob")
    assert alice is not None and alice.attributes == {"user": "42"}
    assert bob is not None and bob.attributes == {}


async def test_wait_for_participant_reports_what_it_waited_for(
    loopback_server: LoopbackServer,
) -> None:
    with pytest.raises(TimeoutError, match="'nobody' in room 'room' did not become active"):
        await loopback_server.wait_for_participant(ROOM, "nobody", timeout=0.05)
    assert await loopback_server.wait_for_participant(ROOM, "nobody", "gone") is None
    with pytest.raises(ValueError, match="state must be"):
        await loopback_server.wait_for_participant(ROOM, "nobody", "left")  # type: ignore[arg-type]


@needs_network
async def test_stop_tells_clients_the_server_shut_down() -> None:
    server = LoopbackServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    async with server:
        with pytest.raises(RuntimeError, match="start\\(\\) runs once"):
            await server.start()
        room = rtc.Room()  # not made by server.connect: the server does not disconnect it
        events = Recorder.on(room)
        await room.connect(server.url, server.token("alice", ROOM))
        await server.wait_for_participant(ROOM, "alice", timeout=WAIT)
    assert (await events.wait_for("disconnected")).reason == REASON.SERVER_SHUTDOWN
    assert (server.running, server.open_connections, server.pending_tasks) == (False, 0, 0)
    await server.stop()  # idempotent
    await room.disconnect()


def test_bad_server_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="leave_timeout"):
        LoopbackServer(leave_timeout=-1)
    with pytest.raises(ValueError, match="ping_interval"):
        LoopbackServer(ping_interval=0)
