"""What a publisher asks for in ``publish_track`` reaches every subscriber's publication.

livekit-server carries the ``AddTrackRequest`` into the track's ``TrackInfo``;
the SDK reads it back as ``frame_metadata_features``, ``encryption_type``,
``audio_features``, ``mime_type``... on the remote publication.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit import rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal
from livekit.rtc._proto import e2ee_pb2, track_pb2

from livekit_loopback import LoopbackServer
from livekit_loopback._track_info import requested
from livekit_loopback.audio import Tone
from livekit_loopback.support import WAIT, Recorder

pytestmark = pytest.mark.e2e

ROOM = "room"


@contextlib.asynccontextmanager
async def _camera() -> AsyncIterator[rtc.LocalVideoTrack]:
    source = rtc.VideoSource(160, 120)
    try:
        yield rtc.LocalVideoTrack.create_video_track("camera", source)
    finally:
        await source.aclose()


async def _remote(listener: rtc.Room, events: Recorder, sid: str) -> rtc.RemoteTrackPublication:
    await events.wait_for("track_published", track=sid)
    for participant in listener.remote_participants.values():
        if sid in participant.track_publications:
            return participant.track_publications[sid]
    raise AssertionError(f"{sid} is not among {listener.remote_participants}")


async def test_video_publish_options_reach_the_subscriber(
    loopback_server: LoopbackServer,
) -> None:
    listener = await loopback_server.connect("listener", ROOM)
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM)
    options = rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_SCREENSHARE, simulcast=False, stream="slides"
    )
    options.frame_metadata_features.extend([track_pb2.FMF_USER_TIMESTAMP, track_pb2.FMF_FRAME_ID])
    async with _camera() as camera:
        local = await alice.local_participant.publish_track(camera, options)
        remote = await _remote(listener, events, local.sid)
    assert remote.name == "camera"
    assert remote.source == rtc.TrackSource.SOURCE_SCREENSHARE
    assert (remote.width, remote.height) == (160, 120)
    assert remote.frame_metadata_features == [
        track_pb2.FMF_USER_TIMESTAMP,
        track_pb2.FMF_FRAME_ID,
    ]
    assert remote.encryption_type == e2ee_pb2.EncryptionType.NONE
    assert remote.simulcasted is False
    # The codec the server's answer settled on, spelled as livekit-server (pion) does.
    assert remote.mime_type == "video/VP8"


async def test_stereo_audio_without_dtx_reaches_the_subscriber(
    loopback_server: LoopbackServer,
) -> None:
    listener = await loopback_server.connect("listener", ROOM)
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False)
    async with Tone(440) as tone:
        local = await alice.local_participant.publish_track(tone.track, options)
        remote = await _remote(listener, events, local.sid)
    assert remote.source == rtc.TrackSource.SOURCE_MICROPHONE
    assert track_pb2.TF_NO_DTX in remote.audio_features
    assert remote.mime_type == "audio/opus"


async def test_an_encrypted_track_is_announced_encrypted(
    loopback_server: LoopbackServer,
) -> None:
    key = rtc.KeyProviderOptions(shared_key=b"a shared secret")
    encrypted = rtc.RoomOptions(encryption=rtc.E2EEOptions(key_provider_options=key))
    listener = await loopback_server.connect("listener", ROOM, options=encrypted)
    events = Recorder.on(listener)
    alice = await loopback_server.connect("alice", ROOM, options=encrypted)
    async with Tone(440) as tone:
        local = await alice.local_participant.publish_track(
            tone.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        remote = await asyncio.wait_for(_remote(listener, events, local.sid), WAIT)
    assert remote.encryption_type == e2ee_pb2.EncryptionType.GCM


def test_requested_track_info_follows_livekit_server() -> None:
    """The fields no SDK reads back, checked on the ``TrackInfo`` itself."""
    request = signal.AddTrackRequest(
        cid="cid",
        type=models.VIDEO,
        source=models.TrackSource.CAMERA,
        layers=[
            models.VideoLayer(quality=models.VideoQuality.HIGH, width=640),
            models.VideoLayer(quality=models.VideoQuality.LOW, width=160),
        ],
        simulcast_codecs=[
            signal.SimulcastCodec(codec="vp9", cid="cid"),
            signal.SimulcastCodec(codec="h264", cid="cid2"),
        ],
        packet_trailer_features=[models.PTF_USER_TIMESTAMP, models.PTF_USER_TIMESTAMP],
    )
    track = requested("TR_x", request)
    assert track.stream == "camera"  # from the source, when the request names none
    assert [layer.quality for layer in track.layers] == [
        models.VideoQuality.LOW,
        models.VideoQuality.HIGH,
    ]
    # VP9 is forwarded as received; an SVC codec announces several layers in one stream.
    assert [codec.mime_type for codec in track.codecs] == ["video/vp9", "video/h264"]
    several = models.VideoLayer.MULTIPLE_SPATIAL_LAYERS_PER_STREAM
    assert track.codecs[0].video_layer_mode == several
    assert not track.simulcast
    assert list(track.packet_trailer_features) == [models.PTF_USER_TIMESTAMP]
    # Transcoding cannot decode VP9, so VP8 stands in, as with a codec livekit-server disables.
    transcoded = requested("TR_x", request, forwarded=False)
    assert [codec.mime_type for codec in transcoded.codecs] == ["video/vp8", "video/h264"]
    assert transcoded.simulcast

    audio = requested(
        "TR_y", signal.AddTrackRequest(cid="a", type=models.AUDIO, stereo=True, disable_dtx=True)
    )
    assert list(audio.audio_features) == [models.TF_STEREO, models.TF_NO_DTX]
    assert audio.backup_codec_policy == models.BackupCodecPolicy.SIMULCAST
    assert audio.stream == "unknown"
