"""The publisher's RTP reaches subscribers as sent: what lives inside encoded frames gets through.

Decoding and re-encoding (``media="transcode"``) loses end-to-end-encrypted
payloads (the server cannot decrypt them) and LiveKit's frame metadata
trailers (they ride at the end of each encoded frame); forwarding RTP keeps
both, and the layers of a simulcast camera, of which each subscriber gets
the one it asks for. Every scenario runs on both signalling paths.
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
    width: int = 160, height: int = 120, rgb: tuple[int, int, int] = (128, 128, 128)
) -> AsyncIterator[rtc.LocalVideoTrack]:
    """A camera of one colour whose n-th frame carries user timestamp 1000 + n and frame id n."""
    source = rtc.VideoSource(width, height)
    pixels = np.full((height, width, 4), 255, dtype=np.uint8)
    pixels[..., :3] = rgb
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


def _each_frame_its_own_metadata(found: list[tuple[int, int]], count: int) -> bool:
    """``count`` frames, in order, each with the user timestamp its frame id says (1000 + id)."""
    frame_ids = [frame_id for _, frame_id in found]
    return (
        all(timestamp == 1000 + frame_id for timestamp, frame_id in found)
        and frame_ids == sorted(frame_ids)
        and len(set(frame_ids)) == count
    )


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
    assert _each_frame_its_own_metadata(found, 5), found


@pytest.mark.parametrize(
    ("codec", "single_pc"),
    [(rtc.VideoCodec.VP9, True), (rtc.VideoCodec.AV1, False)],
    ids=["vp9-rtc-v1", "av1-rtc-v0"],
)
async def test_vp9_and_av1_reach_the_subscriber_with_their_frame_metadata(
    loopback_server: LoopbackServer, codec: rtc.VideoCodec.ValueType, single_pc: bool
) -> None:
    """Codecs the server cannot decode: forwarded all the same, with what their frames carry."""
    listener = await loopback_server.connect("listener", ROOM, options=_options(single_pc))
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM, options=_options(not single_pc))
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, video_codec=codec)
    options.frame_metadata_features.extend([track_pb2.FMF_USER_TIMESTAMP, track_pb2.FMF_FRAME_ID])
    async with _camera_with_metadata(320, 180) as camera:
        sid = (await alice.local_participant.publish_track(camera, options)).sid
        track = await _subscribed(events, listener, sid)
        found = await asyncio.wait_for(_metadata_of_frames(track, 5), WAIT)
    remote = listener.remote_participants["alice"].track_publications[sid]
    name = rtc.VideoCodec.Name(codec)
    assert remote.mime_type.lower() == f"video/{name.lower()}"
    assert _each_frame_its_own_metadata(found, 5), found


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


async def _frames_of_size(
    stream: rtc.VideoStream, size: tuple[int, int], *, run: int = 3, timeout: float = WAIT
) -> list[int]:
    """Frame ids of the frames read until ``run`` in a row are ``size`` (the layer asked for)."""
    frame_ids: list[int] = []
    in_a_row = 0
    seen: list[tuple[int, int]] = []

    async def read() -> None:
        nonlocal in_a_row
        async for event in stream:
            frame = (event.frame.width, event.frame.height)
            seen.append(frame)
            if event.metadata is not None:
                frame_ids.append(event.metadata.frame_id)
            in_a_row = in_a_row + 1 if frame == size else 0
            if in_a_row == run:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {run} frames of {size} in a row; got {seen[-10:]}") from None
    return frame_ids


async def _keyframe_requests(track: rtc.LocalVideoTrack) -> dict[str, int]:
    """rid -> PLIs the publisher's layer received (its outbound RTP stats)."""
    found: dict[str, int] = {}
    for stats in await track.get_stats():
        if stats.WhichOneof("stats") == "outbound_rtp":
            outbound = stats.outbound_rtp.outbound
            found[outbound.rid] = outbound.pli_count
    return found


@both_paths
async def test_each_subscriber_gets_the_simulcast_layer_it_asks_for(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    """A camera published with the SDK's defaults sends three layers; quality picks one."""
    listener = await loopback_server.connect("listener", ROOM, options=_options(single_pc))
    events = Recorder.on(listener)
    watcher = await loopback_server.connect("watcher", ROOM, options=_options(not single_pc))
    watcher_events = Recorder.on(watcher)
    alice = await loopback_server.connect("alice", ROOM)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    options.frame_metadata_features.extend([track_pb2.FMF_FRAME_ID])
    # Large enough for the SDK's three layers: 320x180 (q), 640x360 (h), 960x540 (f).
    async with _camera_with_metadata(960, 540) as camera:
        publication = await alice.local_participant.publish_track(camera, options)
        track = await _subscribed(events, listener, publication.sid)
        watched = await _subscribed(watcher_events, watcher, publication.sid)
        remote = listener.remote_participants["alice"].track_publications[publication.sid]
        assert remote.simulcasted
        stream = rtc.VideoStream(track)
        other = rtc.VideoStream(watched)
        try:
            # Nothing asked: the highest layer.
            frame_ids = await _frames_of_size(stream, (960, 540))
            before = await _keyframe_requests(camera)
            remote.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
            frame_ids += await _frames_of_size(stream, (320, 180))
            # The switch asked the low layer for a keyframe.
            assert (await _keyframe_requests(camera)).get("q", 0) > before.get("q", 0)
            # The watcher asked for nothing: it still gets the highest layer.
            await _frames_of_size(other, (960, 540))
            remote.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_MEDIUM)
            frame_ids += await _frames_of_size(stream, (640, 360))
            remote.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
            frame_ids += await _frames_of_size(stream, (960, 540))
        finally:
            await stream.aclose()
            await other.aclose()
    # One stream to the decoder: each frame's own metadata, in order, across the switches
    # (a picture the old layer sent may come again as the new layer's first keyframe).
    assert frame_ids == sorted(frame_ids) and len(set(frame_ids)) >= len(frame_ids) - 3, frame_ids


async def _colour(track: rtc.Track) -> tuple[float, ...]:
    """The mean RGB colour of the fifth frame of ``track``."""
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
    try:
        seen = 0
        async for event in stream:
            seen += 1
            if seen == 5:
                frame = event.frame
                pixels = np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, -1, 4)
                return tuple(pixels[..., :3].reshape(-1, 3).mean(axis=0))
    finally:
        await stream.aclose()
    raise AssertionError("the video stream ended")


@both_paths
async def test_two_simulcast_cameras_of_one_publisher_each_reach_the_subscriber(
    loopback_server: LoopbackServer, single_pc: bool
) -> None:
    """Their layers share a payload type and announce no SSRC: the server tells them by mid."""
    listener = await loopback_server.connect("listener", ROOM, options=_options(single_pc))
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM)
    camera = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    screen = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_SCREENSHARE, simulcast=True)
    red, blue = (200, 30, 30), (30, 30, 200)
    async with (
        _camera_with_metadata(640, 360, red) as first,
        _camera_with_metadata(640, 360, blue) as second,
    ):
        first_sid = (await alice.local_participant.publish_track(first, camera)).sid
        second_sid = (await alice.local_participant.publish_track(second, screen)).sid
        colours = [
            await asyncio.wait_for(_colour(await _subscribed(events, listener, sid)), WAIT)
            for sid in (first_sid, second_sid)
        ]
    assert np.allclose(colours[0], red, atol=12), colours
    assert np.allclose(colours[1], blue, atol=12), colours


@pytest.mark.parametrize(
    ("codec", "single_pc"),
    [
        (rtc.VideoCodec.VP8, True),
        (rtc.VideoCodec.VP9, False),
        (rtc.VideoCodec.H264, True),
        # No AV1: the SDK cannot decrypt its own AV1 frames, and its native side can abort
        # the whole process while it tries (docs/testing.md, Media).
    ],
    ids=["vp8-rtc-v1", "vp9-rtc-v0", "h264-rtc-v1"],
)
async def test_end_to_end_encrypted_video_is_seen_by_a_subscriber_with_the_key(
    loopback_server: LoopbackServer, codec: rtc.VideoCodec.ValueType, single_pc: bool
) -> None:
    key = rtc.KeyProviderOptions(shared_key=b"only the clients know this")
    encryption = rtc.E2EEOptions(key_provider_options=key)
    listener = await loopback_server.connect(
        "listener", ROOM, options=_options(single_pc, encryption)
    )
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM, options=_options(True, encryption))
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, video_codec=codec)
    green = (30, 200, 30)
    async with _camera_with_metadata(320, 180, green) as camera:
        sid = (await alice.local_participant.publish_track(camera, options)).sid
        colour = await asyncio.wait_for(_colour(await _subscribed(events, listener, sid)), WAIT)
    assert np.allclose(colour, green, atol=12), colour
