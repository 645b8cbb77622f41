"""The ``TrackInfo`` of a published track, built the way livekit-server builds it.

livekit-server (``pkg/rtc/participant.go``: ``addPendingTrack``, and
``mediaTrackReceiver.SetupReceiver`` once the track is negotiated) carries
each ``AddTrackRequest`` field into the track's ``TrackInfo``; SDKs read
several of them back on the publication (``frame_metadata_features`` from
``packet_trailer_features``, ``encryption_type``, ``audio_features``,
``simulcasted``, ``mime_type``). Two steps, as there:

- :func:`requested` when the client asks to publish: everything the request
  says, with livekit-server's defaults (stream from the source, audio
  features implied by ``stereo`` / ``disable_dtx``, the codec list
  synthesised when the client sends none, audio's backup codec policy);
- :func:`negotiated` once the client's offer carries the track: the mime type
  and mid, and each layer's spatial index and rid.

The codecs this server accepts are the ones it negotiates: Opus, PCMU, PCMA,
VP8 and H.264, and VP9 and AV1 when RTP is forwarded as received (aiortc
cannot decode them for ``media="transcode"``). Another requested codec is
replaced by VP8, as livekit-server replaces a codec its configuration does
not enable.
"""

from __future__ import annotations

import time

from livekit.protocol import models
from livekit.protocol import rtc as signal

__all__ = ["negotiated", "requested", "sdp_codecs"]

_ACCEPTED_VIDEO = ("video/vp8", "video/h264")
_FORWARDED_VIDEO = ("video/vp9", "video/av1")
# livekit-server's mime.IsMimeTypeStringSVCCapable: one stream, several spatial layers.
_SVC = ("video/vp9", "video/av1")
_ACCEPTED_AUDIO = ("audio/opus", "audio/pcmu", "audio/pcma")
# livekit-server's default rid names, low to high (buffer.DefaultVideoLayersRid).
_RIDS = ("q", "h", "f")
_STREAMS = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "camera",
    models.TrackSource.SCREEN_SHARE: "screen",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen",
}


def _dedupe(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))


def _sorted_layers(layers: list[models.VideoLayer]) -> list[models.VideoLayer]:
    copies = []
    for layer in layers:
        copy = models.VideoLayer()
        copy.CopyFrom(layer)
        copies.append(copy)
    return sorted(copies, key=lambda layer: int(layer.quality))


def _accepted_mime(kind: int, codec: str, forwarded: bool) -> str:
    """The full mime type of ``codec``, or the one this server takes instead."""
    codec = codec.lower()  # the accepted lists are lower case; so is what clients send
    if kind == models.VIDEO:
        mime = codec if codec.startswith("video/") else f"video/{codec}"
        accepted = _ACCEPTED_VIDEO + (_FORWARDED_VIDEO if forwarded else ())
        return mime if mime in accepted else _ACCEPTED_VIDEO[0]
    mime = codec if codec.startswith("audio/") else f"audio/{codec}"
    return mime if mime in _ACCEPTED_AUDIO else _ACCEPTED_AUDIO[0]


def requested(
    sid: str, request: signal.AddTrackRequest, *, forwarded: bool = True
) -> models.TrackInfo:
    """The ``TrackInfo`` livekit-server answers ``request`` with (``TrackPublishedResponse``).

    ``forwarded``: RTP is forwarded as received, so VP9 and AV1 are accepted.
    """
    policy = request.backup_codec_policy
    if request.type == models.AUDIO and policy != models.BackupCodecPolicy.REGRESSION:
        policy = models.BackupCodecPolicy.SIMULCAST  # audio: simulcast codecs by default
    audio_features = _dedupe(list(request.audio_features))
    if request.stereo and models.TF_STEREO not in audio_features:
        audio_features.append(models.TF_STEREO)
    if request.disable_dtx and models.TF_NO_DTX not in audio_features:
        audio_features.append(models.TF_NO_DTX)
    track = models.TrackInfo(
        sid=sid,
        type=request.type,
        name=request.name,
        width=request.width,
        height=request.height,
        muted=request.muted,
        disable_dtx=request.disable_dtx,
        source=request.source,
        layers=_sorted_layers(list(request.layers)),
        disable_red=request.disable_red,
        stereo=request.stereo,
        encryption=request.encryption,
        stream=request.stream or _STREAMS.get(request.source, "unknown"),
        backup_codec_policy=policy,
        audio_features=audio_features,  # type: ignore[arg-type]
        packet_trailer_features=_dedupe(list(request.packet_trailer_features)),  # type: ignore[arg-type]
    )
    one_layer_per_stream = models.VideoLayer.ONE_SPATIAL_LAYER_PER_STREAM
    if not request.simulcast_codecs:
        # Clients that send no codec list get one synthesised, mime type unknown yet.
        track.codecs.append(
            models.SimulcastCodecInfo(
                cid=request.cid,
                layers=_sorted_layers(list(request.layers)),
                video_layer_mode=one_layer_per_stream,
            )
        )
        return track
    seen: set[str] = set()
    for codec in request.simulcast_codecs:
        if not codec.codec:
            continue
        mime = _accepted_mime(request.type, codec.codec, forwarded)
        if mime in seen:
            continue
        seen.add(mime)
        mode = codec.video_layer_mode
        if request.type == models.VIDEO and mode == models.VideoLayer.MODE_UNUSED:
            svc = mime in _SVC
            mode = (
                models.VideoLayer.MULTIPLE_SPATIAL_LAYERS_PER_STREAM
                if svc
                else one_layer_per_stream
            )
        own_layers = (
            c.layers
            for c in request.simulcast_codecs
            if c.layers and _accepted_mime(request.type, c.codec, forwarded) == mime
        )
        layers = next(own_layers, request.layers)
        track.codecs.append(
            models.SimulcastCodecInfo(
                mime_type=mime,
                cid=codec.cid,
                video_layer_mode=mode,
                layers=_sorted_layers(list(layers)),
            )
        )
    primary = track.codecs[0] if track.codecs else None
    track.simulcast = (
        primary is not None
        and primary.video_layer_mode != models.VideoLayer.MULTIPLE_SPATIAL_LAYERS_PER_STREAM
        and len(primary.layers) > 1
    )
    return track


def negotiated(track: models.TrackInfo, *, mid: str, mime_type: str) -> None:
    """Complete ``track`` once the client's offer carries it on section ``mid``.

    ``mime_type`` is the codec the answer settled on. Layers get livekit-server's
    spatial index (their rank, low to high) and default rid.
    """
    track.mid = mid
    track.mime_type = mime_type
    if track.codecs and not track.codecs[0].mime_type:
        track.codecs[0].mime_type = mime_type
    if track.codecs:
        track.codecs[0].mid = mid
    for rank, layer in enumerate(track.layers):
        layer.spatial_layer = rank
        layer.rid = _RIDS[min(rank, len(_RIDS) - 1)]
    if not track.HasField("version"):
        track.version.CopyFrom(models.TimedVersion(unix_micro=int(time.time() * 1_000_000)))


def sdp_codecs(sdp: str) -> dict[str, str]:
    """mid -> the mime type of the first codec of each m-section of ``sdp``.

    In an answer that is the codec the offerer sends with. The codec name is
    spelled as in the SDP (``video/VP8``, ``audio/opus``), as pion reports it.
    """
    found: dict[str, str] = {}
    kind = mid = ""
    first_pt: str | None = None
    rtpmap: dict[str, str] = {}
    for line in [*sdp.splitlines(), "m=end"]:
        if line.startswith("m="):
            if mid and first_pt is not None and first_pt in rtpmap:
                found[mid] = f"{kind}/{rtpmap[first_pt]}"
            fields = line[2:].split()
            kind, mid, rtpmap = fields[0], "", {}
            first_pt = fields[3] if len(fields) > 3 else None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :].strip()
        elif line.startswith("a=rtpmap:"):
            pt, _, encoding = line[len("a=rtpmap:") :].partition(" ")
            rtpmap[pt] = encoding.split("/", 1)[0]
    return found
