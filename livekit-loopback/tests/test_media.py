"""Media, data and subscriptions through the LoopbackServer, seen by real SDK clients.

Every scenario runs with the subscriber on both signalling paths: ``/rtc/v1``
(one PeerConnection: the server answers the client's offers) and ``/rtc``
(two PeerConnections: the server offers the subscriber one). Tones go in,
and the frequency that comes out is checked, so a wrong or silent track fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit import rtc
from livekit.rtc._proto.room_pb2 import SimulateScenarioKind

from livekit_loopback import LoopbackServer
from livekit_loopback.audio import Tone, dominant_frequency, record
from livekit_loopback.support import WAIT, Recorder, eventually

pytestmark = pytest.mark.e2e

ROOM = "room"
PITCH_TOLERANCE = 10.0  # Hz; the FFT bins of 0.5 s are 2 Hz wide
MIC = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
RECONNECT_WAIT = 20.0
both_paths = pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-v0"])


def _options(single_pc: bool, *, auto_subscribe: bool = True) -> rtc.RoomOptions:
    return rtc.RoomOptions(single_peer_connection=single_pc, auto_subscribe=auto_subscribe)


def _track(room: rtc.Room, identity: str, sid: str) -> rtc.Track:
    track = room.remote_participants[identity].track_publications[sid].track
    assert track is not None, (
        f"{identity}'s {sid} has no track in {room.local_participant.identity}"
    )
    return track


async def _listener(
    server: LoopbackServer, single_pc: bool, *, auto_subscribe: bool = True
) -> tuple[rtc.Room, Recorder]:
    """The subscriber under test, on the signalling path the test is about, and its events."""
    room = await server.connect(
        "listener", ROOM, options=_options(single_pc, auto_subscribe=auto_subscribe)
    )
    return room, Recorder.on(room)


async def _pitch(room: rtc.Room, identity: str, sid: str) -> float:
    return dominant_frequency(await record(_track(room, identity, sid), seconds=0.5))


@both_paths
async def test_each_published_tone_reaches_the_subscriber_unchanged(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    listener, events = await _listener(loopback_server, single_pc)
    low_user = await loopback_server.connect("low", ROOM)
    low_events = Recorder.on(low_user)
    high_user = await loopback_server.connect("high", ROOM, options=_options(not single_pc))
    subscribed_at_publisher = asyncio.Event()
    low_user.on("local_track_subscribed", lambda track: subscribed_at_publisher.set())

    async with Tone(440) as low, Tone(1000) as high:
        low_pub = await low_user.local_participant.publish_track(low.track, MIC)
        high_pub = await high_user.local_participant.publish_track(high.track, MIC)
        await events.wait_for("track_subscribed", identity="low", track=low_pub.sid)
        await events.wait_for("track_subscribed", identity="high", track=high_pub.sid)

        assert isinstance(_track(listener, "low", low_pub.sid), rtc.RemoteAudioTrack)
        assert abs(await _pitch(listener, "low", low_pub.sid) - 440) < PITCH_TOLERANCE
        assert abs(await _pitch(listener, "high", high_pub.sid) - 1000) < PITCH_TOLERANCE
        # Both publishers receive each other's tone too.
        await low_events.wait_for("track_subscribed", track=high_pub.sid)
        await asyncio.wait_for(subscribed_at_publisher.wait(), WAIT)

    view = loopback_server.participant(ROOM, "listener")
    assert view is not None and view.subscribed == {low_pub.sid, high_pub.sid}


@pytest.fixture
def slow_subscriber_dtls(monkeypatch: pytest.MonkeyPatch) -> float:
    """The server's side of each subscriber PeerConnection takes this long over its DTLS handshake.

    The server offers a two-PC client's subscriber PeerConnection and is its
    DTLS server; the client's ``connect`` does not wait for that connection.
    Fault injection: held in ``connecting`` this long, so tracks are
    negotiated on it before it connects.
    """
    from aiortc.rtcdtlstransport import RTCDtlsTransport, State

    delay = 2.0
    original = RTCDtlsTransport._recv_next
    slowed: set[int] = set()

    async def slow(self: RTCDtlsTransport) -> None:
        if self.state == "connecting" and self._role == "server" and id(self) not in slowed:
            slowed.add(id(self))
            await asyncio.sleep(delay)
        if self._state != State.CLOSED:
            await original(self)

    monkeypatch.setattr(RTCDtlsTransport, "_recv_next", slow)
    return delay


async def test_tracks_negotiated_before_the_subscriber_connection_connects_are_sent(
    loopback_server: LoopbackServer, slow_subscriber_dtls: float
) -> None:
    """aiortc starts a sender only if its DTLS is connected when the description is applied."""
    listener, events = await _listener(loopback_server, single_pc=False)
    user = await loopback_server.connect("alice", ROOM, options=_options(True))
    async with Tone(440) as tone:
        sid = (await user.local_participant.publish_track(tone.track, MIC)).sid
        await events.wait_for("track_subscribed", track=sid)
        view = loopback_server._service.find(ROOM, "listener")
        assert view.downlink is not None and view.downlink.peer.state == "connecting"
        samples = await record(_track(listener, "alice", sid), seconds=0.5, timeout=WAIT)
    assert abs(dominant_frequency(samples) - 440) < PITCH_TOLERANCE


@contextlib.asynccontextmanager
async def _camera(rgb: tuple[int, int, int]) -> AsyncIterator[rtc.LocalVideoTrack]:
    """A small camera track showing one colour, 15 frames a second."""
    width, height = 160, 120
    source = rtc.VideoSource(width, height)
    pixels = np.empty((height, width, 4), dtype=np.uint8)
    pixels[...] = (*rgb, 255)
    frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, pixels.tobytes())

    async def play() -> None:
        while True:
            source.capture_frame(frame)
            await asyncio.sleep(1 / 15)

    task = asyncio.get_running_loop().create_task(play())
    try:
        yield rtc.LocalVideoTrack.create_video_track("camera", source)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.aclose()


@both_paths
async def test_published_video_reaches_the_subscriber(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    listener, events = await _listener(loopback_server, single_pc)
    user = await loopback_server.connect("alice", ROOM)
    colour = (200, 30, 60)
    # One encoding of a known size (test_rtp_relay covers the SDK's simulcast default).
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
    async with _camera(colour) as camera:
        sid = (await user.local_participant.publish_track(camera, options)).sid
        await events.wait_for("track_subscribed", track=sid)
        track = _track(listener, "alice", sid)
        assert isinstance(track, rtc.RemoteVideoTrack)
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
        try:
            event = await asyncio.wait_for(_nth(stream, 5), WAIT)
        finally:
            await stream.aclose()
    received = event.frame
    pixels = np.frombuffer(received.data, dtype=np.uint8).reshape(received.height, -1, 4)
    assert (received.width, received.height) == (160, 120)
    mean = pixels[..., :3].reshape(-1, 3).mean(axis=0)
    assert np.allclose(mean, colour, atol=10), mean


async def _nth(stream: rtc.VideoStream, n: int) -> rtc.VideoFrameEvent:
    seen = 0
    async for event in stream:
        seen += 1
        if seen == n:
            return event
    raise AssertionError(f"the video stream ended after {seen} frames")


@both_paths
async def test_set_subscribed_turns_forwarding_off_and_on(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    listener, events = await _listener(loopback_server, single_pc, auto_subscribe=False)
    user = await loopback_server.connect("alice", ROOM)
    async with Tone(440) as tone:
        sid = (await user.local_participant.publish_track(tone.track, MIC)).sid
        await events.wait_for("track_published", track=sid)
        # Without auto-subscribe the server forwards nothing on its own.
        view = loopback_server.participant(ROOM, "listener")
        assert view is not None and view.subscribed == frozenset()
        publication = listener.remote_participants["alice"].track_publications[sid]

        publication.set_subscribed(True)
        await events.wait_for("track_subscribed", track=sid)
        assert abs(await _pitch(listener, "alice", sid) - 440) < PITCH_TOLERANCE

        publication.set_subscribed(False)
        await events.wait_for("track_unsubscribed", track=sid)

        await loopback_server.wait_for_subscription(ROOM, "listener", sid, subscribed=False)

        seen = len(events.events)
        publication.set_subscribed(True)
        # The same track comes back, on a fresh section, with the same tone.
        await events.wait_for("track_subscribed", track=sid, after=seen)
        assert abs(await _pitch(listener, "alice", sid) - 440) < PITCH_TOLERANCE


@both_paths
async def test_unpublish_mute_and_leave_reach_the_subscriber(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    listener, events = await _listener(loopback_server, single_pc)
    user = await loopback_server.connect("alice", ROOM)
    async with Tone(440) as tone:
        first = (await user.local_participant.publish_track(tone.track, MIC)).sid
        await events.wait_for("track_subscribed", track=first)

        tone.track.mute()
        await events.wait_for("track_muted", track=first)
        tone.track.unmute()
        await events.wait_for("track_unmuted", track=first)
        assert abs(await _pitch(listener, "alice", first) - 440) < PITCH_TOLERANCE

        await user.local_participant.unpublish_track(first)
        unsubscribed = await events.wait_for("track_unsubscribed", track=first)
        unpublished = await events.wait_for("track_unpublished", track=first)
        assert events.events.index(unsubscribed) < events.events.index(unpublished)
        await loopback_server.wait_for_subscription(ROOM, "listener", first, subscribed=False)

        second = (await user.local_participant.publish_track(tone.track, MIC)).sid
        await events.wait_for("track_subscribed", track=second)
        assert abs(await _pitch(listener, "alice", second) - 440) < PITCH_TOLERANCE

        await user.disconnect()
        await events.wait_for("track_unsubscribed", track=second)
        await events.wait_for("participant_disconnected", identity="alice")
    view = loopback_server.participant(ROOM, "listener")
    assert view is not None and view.subscribed == frozenset()


@both_paths
async def test_data_packets_reach_everyone_or_the_named_identities(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    sender = await loopback_server.connect("alice", ROOM, options=_options(single_pc))
    inboxes: dict[str, asyncio.Queue[rtc.DataPacket]] = {}
    for identity, path in (("bob", single_pc), ("carol", not single_pc)):
        room = await loopback_server.connect(identity, ROOM, options=_options(path))
        inbox: asyncio.Queue[rtc.DataPacket] = asyncio.Queue()
        room.on("data_received", inbox.put_nowait)
        inboxes[identity] = inbox
    for identity in ("bob", "carol"):
        await loopback_server.wait_for_participant(ROOM, identity)

    await sender.local_participant.publish_data(b"to all", topic="news")
    for identity in ("bob", "carol"):
        packet = await asyncio.wait_for(inboxes[identity].get(), WAIT)
        assert (packet.data, packet.topic, packet.kind) == (
            b"to all",
            "news",
            rtc.DataPacketKind.KIND_RELIABLE,
        )
        assert packet.participant is not None and packet.participant.identity == "alice"

    # Lossy packets may be lost on a real network; on this machine they are not.
    await sender.local_participant.publish_data(
        b"to carol", reliable=False, destination_identities=["carol"]
    )
    packet = await asyncio.wait_for(inboxes["carol"].get(), WAIT)
    assert (packet.data, packet.kind) == (b"to carol", rtc.DataPacketKind.KIND_LOSSY)
    # Carol has it, so the server has dealt with it: Bob's next packet is the next one sent.
    await sender.local_participant.publish_data(b"to bob", destination_identities=["bob"])
    packet = await asyncio.wait_for(inboxes["bob"].get(), WAIT)
    assert packet.data == b"to bob"
    assert inboxes["bob"].empty() and inboxes["carol"].empty()


async def test_metadata_name_and_attributes_reach_the_room(
    loopback_server: LoopbackServer,
) -> None:
    observer = await loopback_server.connect("observer", ROOM)
    events = Recorder.on(observer)
    changed: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    observer.on(
        "participant_name_changed",
        lambda participant, old, new: changed.put_nowait(("name", new)),
    )
    user = await loopback_server.connect("alice", ROOM, can_update_own_metadata=True)
    await events.wait_for("participant_active", identity="alice")

    await user.local_participant.set_metadata('{"plan": "pro"}')
    await events.wait_for("participant_metadata_changed", identity="alice")
    await user.local_participant.set_name("Alice")
    assert await asyncio.wait_for(changed.get(), WAIT) == ("name", "Alice")
    await user.local_participant.set_attributes({"user": "42"})
    await events.wait_for("participant_attributes_changed", identity="alice")

    alice = observer.remote_participants["alice"]
    assert (alice.metadata, alice.name, alice.attributes) == (
        '{"plan": "pro"}',
        "Alice",
        {"user": "42"},
    )


@both_paths
async def test_full_reconnect_republishes_and_peers_resubscribe(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    listener, events = await _listener(loopback_server, single_pc)
    user = await loopback_server.connect("alice", ROOM, options=_options(single_pc))
    user_events = Recorder.on(user)
    async with Tone(440) as tone:
        before = (await user.local_participant.publish_track(tone.track, MIC)).sid
        await events.wait_for("track_subscribed", track=before)
        old_sid = user.local_participant.sid

        await user.simulate_scenario(SimulateScenarioKind.SIMULATE_FULL_RECONNECT)
        await user_events.wait_for("reconnected", timeout=RECONNECT_WAIT)

        await events.wait_for("track_unsubscribed", track=before)
        view = await loopback_server.wait_for_participant(ROOM, "alice", timeout=WAIT)
        assert view is not None and view.sid != old_sid
        back = await events.wait_for("participant_connected", sid=view.sid)
        after = await events.wait_for(
            "track_subscribed", identity="alice", after=events.events.index(back)
        )
        assert after.track is not None and after.track != before
        assert abs(await _pitch(listener, "alice", after.track) - 440) < PITCH_TOLERANCE


async def test_grants_without_subscribe_or_data_forward_nothing(
    loopback_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "livekit_loopback")
    deaf = await loopback_server.connect("deaf", ROOM, can_subscribe=False)
    deaf_events = Recorder.on(deaf)
    quiet = await loopback_server.connect("quiet", ROOM, can_publish_data=False)
    user = await loopback_server.connect("alice", ROOM)
    inbox: asyncio.Queue[rtc.DataPacket] = asyncio.Queue()
    user.on("data_received", inbox.put_nowait)
    async with Tone(440) as tone:
        sid = (await user.local_participant.publish_track(tone.track, MIC)).sid
        await deaf_events.wait_for("track_published", track=sid)
        view = loopback_server.participant(ROOM, "deaf")
        assert view is not None and view.subscribed == frozenset()

    await quiet.local_participant.publish_data(b"not allowed")  # the SDK sends it anyway
    assert await eventually(lambda: any(r.msg == "data.not_allowed" for r in caplog.records), WAIT)
    await deaf.local_participant.publish_data(b"allowed")
    packet = await asyncio.wait_for(inbox.get(), WAIT)
    assert packet.data == b"allowed" and inbox.empty()
