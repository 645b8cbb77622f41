"""The publisher's RTP reaches subscribers as sent: what lives inside encoded frames gets through.

Decoding and re-encoding (``media="transcode"``) loses end-to-end-encrypted
payloads (the server cannot decrypt them) and LiveKit's frame metadata
trailers (they ride at the end of each encoded frame); forwarding RTP keeps
both. Every scenario runs on both signalling paths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit import rtc
from livekit.rtc._proto import track_pb2, video_frame_pb2

from livekit_loopback import LoopbackServer
from livekit_loopback.audio import Tone, dominant_frequency, record
from livekit_loopback.support import WAIT, Recorder

pytestmark = pytest.mark.e2e

ROOM = "room"
MIC = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
both_paths = pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-v0"])


def _options(single_pc: bool, encryption: rtc.E2EEOptions | None = None) -> rtc.RoomOptions:
    return rtc.RoomOptions(single_peer_connection=single_pc, encryption=encryption)


async def _subscribed(events: Recorder, listener: rtc.Room, sid: str) -> rtc.Track:
    await events.wait_for("track_subscribed", track=sid)
    for participant in listener.remote_participants.values():
        publication = participant.track_publications.get(sid)
        if publication is not None and publication.track is not None:
            return publication.track
    raise AssertionError(f"{sid} has no track in {listener.local_participant.identity}")


@both_paths
async def test_end_to_end_encrypted_audio_is_heard_by_a_subscriber_with_the_key(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    key = rtc.KeyProviderOptions(shared_key=b"only the clients know this")
    encryption = rtc.E2EEOptions(key_provider_options=key)
    listener = await loopback_server.connect(
        "listener", ROOM, options=_options(single_pc, encryption)
    )
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM, options=_options(True, encryption))
    async with Tone(440) as tone:
        sid = (await alice.local_participant.publish_track(tone.track, MIC)).sid
        track = await _subscribed(events, listener, sid)
        samples = await record(track, seconds=0.5)
    assert abs(dominant_frequency(samples) - 440) < 10


@contextlib.asynccontextmanager
async def _camera_with_metadata(
    width: int = 160, height: int = 120
) -> AsyncIterator[rtc.LocalVideoTrack]:
    """A camera whose n-th frame carries user timestamp 1000 + n and frame id n."""
    source = rtc.VideoSource(width, height)
    pixels = np.full((height, width, 4), 128, dtype=np.uint8)
    frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, pixels.tobytes())

    async def play() -> None:
        n = 0
        while True:
            n += 1
            metadata = video_frame_pb2.FrameMetadata(user_timestamp=1000 + n, frame_id=n)
            source.capture_frame(frame, metadata=metadata)
            await asyncio.sleep(1 / 15)

    task = asyncio.get_running_loop().create_task(play())
    try:
        yield rtc.LocalVideoTrack.create_video_track("camera", source)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.aclose()


async def _metadata_of_frames(track: rtc.Track, count: int) -> list[tuple[int, int]]:
    stream = rtc.VideoStream(track)
    found: list[tuple[int, int]] = []
    try:
        async for event in stream:
            if event.metadata is not None:
                found.append((event.metadata.user_timestamp, event.metadata.frame_id))
            if len(found) == count:
                break
    finally:
        await stream.aclose()
    return found


@both_paths
async def test_frame_metadata_reaches_the_subscriber(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    listener = await loopback_server.connect("listener", ROOM, options=_options(single_pc))
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
    options.frame_metadata_features.extend([track_pb2.FMF_USER_TIMESTAMP, track_pb2.FMF_FRAME_ID])
    async with _camera_with_metadata() as camera:
        sid = (await alice.local_participant.publish_track(camera, options)).sid
        track = await _subscribed(events, listener, sid)
        found = await asyncio.wait_for(_metadata_of_frames(track, 5), WAIT)
    # Each frame's own metadata, in order: the user timestamp is its frame id + 1000.
    assert all(timestamp == 1000 + frame_id for timestamp, frame_id in found), found
    frame_ids = [frame_id for _, frame_id in found]
    assert frame_ids == sorted(frame_ids) and len(set(frame_ids)) == 5, found


async def test_the_server_forwards_without_decoding(loopback_server: LoopbackServer) -> None:
    listener = await loopback_server.connect("listener", ROOM)
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM)
    async with Tone(440) as tone:
        sid = (await alice.local_participant.publish_track(tone.track, MIC)).sid
        track = await _subscribed(events, listener, sid)
        await record(track, seconds=0.2)
    (feed,) = loopback_server._service.find(ROOM, "alice").feeds.values()
    assert feed.relay is not None and feed.relay.packets > 0
    assert feed.frames == 0  # aiortc decoded nothing


@pytest.mark.loopback(media="transcode")
async def test_transcode_mode_still_decodes_and_re_encodes(
    loopback_server: LoopbackServer,
) -> None:
    listener = await loopback_server.connect("listener", ROOM)
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM)
    async with Tone(1000) as tone:
        sid = (await alice.local_participant.publish_track(tone.track, MIC)).sid
        track = await _subscribed(events, listener, sid)
        samples = await record(track, seconds=0.5)
    assert abs(dominant_frequency(samples) - 1000) < 10
    (feed,) = loopback_server._service.find(ROOM, "alice").feeds.values()
    assert feed.relay is None and feed.frames > 0


def test_media_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="media"):
        LoopbackServer(media="sfu")  # type: ignore[arg-type]


async def _frame_sizes(track: rtc.Track, count: int) -> list[tuple[int, int]]:
    stream = rtc.VideoStream(track)
    sizes: list[tuple[int, int]] = []
    try:
        async for event in stream:
            sizes.append((event.frame.width, event.frame.height))
            if len(sizes) == count:
                break
    finally:
        await stream.aclose()
    return sizes


@both_paths
async def test_a_camera_published_with_default_options_reaches_the_subscriber(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    """The SDK's defaults for a camera include simulcast: it negotiates, one layer comes through."""
    listener = await loopback_server.connect("listener", ROOM, options=_options(single_pc))
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM)
    camera_options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    # Large enough for the SDK to send more than one layer.
    async with _camera_with_metadata(640, 360) as camera:
        publication = await alice.local_participant.publish_track(camera, camera_options)
        track = await _subscribed(events, listener, publication.sid)
        sizes = await asyncio.wait_for(_frame_sizes(track, 10), WAIT)
    assert len(sizes) == 10 and all(width > 0 and height > 0 for width, height in sizes)
    remote = listener.remote_participants["alice"].track_publications[publication.sid]
    assert remote.simulcasted  # as livekit-server announces it
