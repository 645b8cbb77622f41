"""RTP forwarded as received: what the publisher encoded reaches each subscriber unchanged.

aiortc has no SFU mode: an ``RTCRtpReceiver`` decodes what it receives and an
``RTCRtpSender`` encodes what it sends. A :class:`RtpRelay` sits between the
two, on aiortc 1.x internals (pinned by the ``testing`` extra):

- **In.** The relay wraps the publisher receiver's ``_handle_rtp_packet`` (the
  DTLS transport's demux calls it per instance), so it sees every RTP packet of
  the track, RTX unwrapped, before aiortc's own handling. aiortc still does its
  bookkeeping (receiver reports, NACKs to the publisher, the jitter buffer's
  keyframe requests on loss), but the frames it assembles are dropped before
  its decoder: nothing is decoded.
- **Out.** Each subscriber still gets an aiortc sender with its own track (a
  :class:`~._media.ForwardedTrack` nobody pushes to), so SDP, SSRC, mid, RTCP
  sender reports and the client's NACKs work as aiortc does them. The relay
  writes each packet to the sender's transport itself, rewritten for that
  subscriber: its SSRC, the payload type it negotiated for the publisher's
  codec, its own sequence numbers (continuous from a random start), its mid and
  send time. Payload, timestamp and marker are the publisher's: VP8/H.264/Opus
  payloads with LiveKit's packet trailers or E2EE frames inside go through as
  they came. Sent packets go into the sender's retransmission history, so a
  subscriber's NACK is answered by aiortc (over RTX when negotiated).
- **Layers.** A simulcast publisher sends one RTP stream per layer, each
  named by its RID (see :mod:`._simulcast`). Each subscriber gets one of them
  at a time, the one its ``UpdateTrackSettings`` asks for (:meth:`RtpRelay.select`:
  quality, or the smallest layer covering the width and height it displays;
  the highest by default), or the nearest below when that one is not being
  sent. A switch happens on a keyframe of the new layer, asked for with a PLI
  on that layer's SSRC; from there the subscriber's sequence numbers go on
  from the last one it got and its timestamps from the last one plus the time
  elapsed, so it sees one stream. aiortc's receiver keeps its NACK and
  keyframe bookkeeping per layer (it has one of each, for one SSRC).
- **Keyframes.** A subscriber's PLI or FIR is relayed to the publisher as a PLI
  on the layer it gets (at most one per :data:`_KEYFRAME_INTERVAL` per layer),
  and a subscriber's first packet triggers one, so video starts with a keyframe.

What it does not do: transcode (a subscriber that did not negotiate the
publisher's codec gets nothing, logged), forward header extensions other
than mid, send time and audio level (aiortc negotiates no others), tell the
publisher which layers nobody watches (dynacast), adapt to a subscriber's
bandwidth.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import clock
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import NackGenerator, RTCRtpReceiver
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtpPacket,
    unwrap_rtx,
)
from aiortc.utils import uint16_add, uint16_gt, uint32_add, uint32_gt

from ._log import get_logger
from ._simulcast import Vp8Numbering, keyframe_start

if TYPE_CHECKING:
    from ._media import ForwardedTrack

__all__ = ["Layer", "LayerChoice", "RtpRelay", "wanted_rank"]

_KEYFRAME_INTERVAL = 0.5
"""Seconds between two keyframe requests for one layer."""

_LAYER_TIMEOUT = 1.0
"""A layer with no packet for this long is not being sent (the publisher dropped it)."""

_LOW, _MEDIUM, _HIGH, _OFF = 0, 1, 2, 3  # livekit.protocol.models.VideoQuality

# aiortc's name-mangled internals the relay uses.
_R = "_RTCRtpReceiver__"
_S = "_RTCRtpSender__"


class _NoDecode:
    """Stands in for a receiver's decoder queue: frames are dropped, the stop gets through."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def put(self, item: Any) -> None:
        if item is None:
            self._queue.put(None)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._queue.get(*args, **kwargs)


# The format parameters that must agree, with their default (RFC 6184, the VP9
# and AV1 RTP payload formats).
_SAME_PARAMETERS = {
    "video/h264": {"packetization-mode": "0", "profile-level-id": ""},
    "video/vp9": {"profile-id": "0"},
    "video/av1": {"profile": "0"},
}


def _same_codec(ours: RTCRtpCodecParameters, theirs: RTCRtpCodecParameters) -> bool:
    mime_type = ours.mimeType.lower()
    if mime_type != theirs.mimeType.lower() or ours.clockRate != theirs.clockRate:
        return False
    keys = _SAME_PARAMETERS.get(mime_type, {})
    return all(
        str(ours.parameters.get(key, default)).lower()
        == str(theirs.parameters.get(key, default)).lower()
        for key, default in keys.items()
    )


@dataclass(frozen=True)
class Layer:
    """One simulcast layer as the publisher announced it (``TrackInfo.layers``)."""

    rid: str
    quality: int
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class LayerChoice:
    """What a subscriber asked for (``UpdateTrackSettings``): the highest quality by default."""

    quality: int = _HIGH
    width: int = 0
    height: int = 0
    disabled: bool = False


def wanted_rank(layers: list[Layer], choice: LayerChoice) -> int:
    """The rank (0: lowest) of the layer ``choice`` asks for among ``layers`` (low to high).

    A width or height asks for the smallest layer covering both (the highest
    if none does), as livekit-server picks a layer for the size a client
    displays; otherwise the highest layer whose quality is at most the one asked.
    """
    if not layers:
        return min(choice.quality, _HIGH)
    if choice.width or choice.height:
        covering = (
            rank
            for rank, layer in enumerate(layers)
            if layer.width >= choice.width and layer.height >= choice.height
        )
        return next(covering, len(layers) - 1)
    fitting = (rank for rank, layer in enumerate(layers) if layer.quality <= choice.quality)
    return max(fitting, default=0)


class _Stream:
    """One RTP stream the publisher sends for the track: the track itself, or one layer."""

    def __init__(self, ssrc: int, kind: str) -> None:
        self.ssrc = ssrc
        self.rid: str | None = None
        self.seen = 0.0
        self.keyframe_requested = 0.0
        # aiortc's receiver has one NACK generator and one jitter buffer, for
        # one SSRC; fed three layers' sequence numbers they ask for bogus
        # retransmissions and keyframes.
        self.nack = NackGenerator() if kind == "video" else None
        self.jitter = JitterBuffer(capacity=512, is_video=True) if kind == "video" else None


class _Sink:
    """One subscriber's copy of the stream."""

    def __init__(self, track: ForwardedTrack, choice: LayerChoice) -> None:
        self.track = track
        self.choice = choice
        self.payload_types: dict[int, int | None] = {}
        self.hooked = False
        self.current: int | None = None
        """The SSRC forwarded now (None: nothing yet, or paused)."""
        self.switches = 0
        self.seq_offset = 0
        self.ts_offset = 0
        self.last_seq: int | None = None
        self.last_ts = 0
        self.last_sent = 0.0
        self.vp8 = Vp8Numbering()


class RtpRelay:
    """Forwards the RTP of one publisher's receiver to subscribers' senders."""

    def __init__(self, receiver: RTCRtpReceiver, kind: str, label: str) -> None:
        self.kind = kind
        self.packets = 0
        """RTP packets received from the publisher (for tests and benchmarks)."""
        self._receiver = receiver
        self._sinks: dict[str, _Sink] = {}
        self._streams: dict[int, _Stream] = {}
        self._layers: list[Layer] = []
        self._media_ssrc: int | None = None
        self._closed = False
        self._log = get_logger().bind(relay=label)
        original: Callable[[RtpPacket, int], Awaitable[None]] = receiver._handle_rtp_packet

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            if not self._closed:
                await self._forward(packet)
            self._bookkeeping_for(packet)
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
        setattr(receiver, f"{_R}decoder_queue", _NoDecode(getattr(receiver, f"{_R}decoder_queue")))

    def set_layers(self, layers: list[Layer]) -> None:
        """The track's simulcast layers, low to high (from its ``TrackInfo``)."""
        self._layers = list(layers)

    def add(self, key: str, track: ForwardedTrack, choice: LayerChoice | None = None) -> None:
        self._sinks[key] = _Sink(track, choice or LayerChoice())

    def remove(self, key: str) -> None:
        self._sinks.pop(key, None)

    def select(self, key: str, choice: LayerChoice) -> None:
        """Subscriber ``key`` asked for ``choice``: it gets that layer from its next keyframe."""
        sink = self._sinks.get(key)
        if sink is not None:
            sink.choice = choice
            if choice.disabled:
                sink.current = None

    def forwarded(self, key: str) -> str | None:
        """The rid of the layer subscriber ``key`` gets now ("" without layers; None: nothing)."""
        sink = self._sinks.get(key)
        if sink is None or sink.current is None:
            return None
        stream = self._streams.get(sink.current)
        return "" if stream is None or stream.rid is None else stream.rid

    def layers_sent(self) -> list[str]:
        """The rids of the layers the publisher sends now."""
        now = time.monotonic()
        return [s.rid for s in self._streams.values() if s.rid and now - s.seen < _LAYER_TIMEOUT]

    def close(self) -> None:
        self._closed = True
        self._sinks.clear()

    async def request_keyframe(self, ssrc: int | None = None) -> None:
        """Ask the publisher for a keyframe on ``ssrc`` (default: the track's; rate-limited)."""
        ssrc = self._media_ssrc if ssrc is None else ssrc
        stream = None if ssrc is None else self._streams.get(ssrc)
        if self.kind != "video" or stream is None:
            return
        now = time.monotonic()
        if now - stream.keyframe_requested < _KEYFRAME_INTERVAL:
            return
        stream.keyframe_requested = now
        await self._receiver._send_rtcp_pli(stream.ssrc)

    # ------------------------------------------------------------------ in

    def _media_ssrc_of(self, packet: RtpPacket) -> int:
        codecs: dict[int, RTCRtpCodecParameters] = getattr(self._receiver, f"{_R}codecs")
        codec = codecs.get(packet.payload_type)
        if codec is not None and is_rtx(codec):
            return int(getattr(self._receiver, f"{_R}rtx_ssrc").get(packet.ssrc, packet.ssrc))
        return packet.ssrc

    def _bookkeeping_for(self, packet: RtpPacket) -> None:
        """Point aiortc's receiver at the packet's stream's NACK generator and jitter buffer."""
        if self.kind != "video":
            return
        stream = self._streams.get(self._media_ssrc_of(packet))
        if stream is not None:
            setattr(self._receiver, f"{_R}nack_generator", stream.nack)
            setattr(self._receiver, f"{_R}jitter_buffer", stream.jitter)

    async def _forward(self, packet: RtpPacket) -> None:
        codecs: dict[int, RTCRtpCodecParameters] = getattr(self._receiver, f"{_R}codecs")
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        if is_rtx(codec):
            original_ssrc = getattr(self._receiver, f"{_R}rtx_ssrc").get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or apt not in codecs or len(packet.payload) < 2:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = codecs[apt]
        stream = self._streams.get(packet.ssrc)
        if stream is None:
            stream = self._streams[packet.ssrc] = _Stream(packet.ssrc, self.kind)
        if packet.extensions.rtp_stream_id and stream.rid is None:
            stream.rid = packet.extensions.rtp_stream_id
        if not packet.payload:
            return  # padding only (bandwidth probes)
        now = time.monotonic()
        stream.seen = now
        self.packets += 1
        self._media_ssrc = packet.ssrc
        for sink in list(self._sinks.values()):
            await self._send(sink, packet, codec, now)

    # ------------------------------------------------------------------ which layer

    def _rank(self, rid: str | None) -> int:
        ranks = [layer.rid for layer in self._layers] or ["q", "h", "f"]
        return ranks.index(rid) if rid in ranks else len(ranks)

    def _target(self, sink: _Sink, now: float) -> int | None:
        """The SSRC ``sink`` should get: its layer if sent, else the nearest below, else above."""
        if sink.choice.disabled or sink.choice.quality == _OFF:
            return None
        live = [
            s for s in self._streams.values() if s.rid is not None and now - s.seen < _LAYER_TIMEOUT
        ]
        if not live:
            return self._media_ssrc
        wanted = wanted_rank(self._layers, sink.choice)
        below = [s for s in live if self._rank(s.rid) <= wanted]
        if below:
            return max(below, key=lambda s: self._rank(s.rid)).ssrc
        return min(live, key=lambda s: self._rank(s.rid)).ssrc

    # ------------------------------------------------------------------ out

    async def _send(
        self, sink: _Sink, packet: RtpPacket, codec: RTCRtpCodecParameters, now: float
    ) -> None:
        transceiver = sink.track.transceiver
        if transceiver is None:
            return
        sender = transceiver.sender
        if sender.track is not sink.track or not getattr(sender, f"{_S}started"):
            return  # not negotiated yet, or no longer this track's
        payload_type = sink.payload_types.get(packet.payload_type, -1)
        if payload_type == -1:
            match = next((c for c in transceiver._codecs if _same_codec(c, codec)), None)
            payload_type = None if match is None else match.payloadType
            sink.payload_types[packet.payload_type] = payload_type
            if payload_type is None:
                self._log.warning(
                    "relay.codec_not_negotiated",
                    codec=codec.mimeType,
                    negotiated=[c.mimeType for c in transceiver._codecs],
                )
        if payload_type is None:
            return
        if not sink.hooked:
            sink.hooked = True
            self._relay_feedback(sender, sink)
        target = self._target(sink, now)
        if target is None:
            return
        if packet.ssrc != sink.current:
            if packet.ssrc != target:
                return
            if not await self._may_switch(sink, packet, codec):
                return
            self._switch(sink, packet, codec, now)
        elif target != packet.ssrc:
            await self.request_keyframe(target)  # the switch waits for it
        payload = packet.payload
        if codec.mimeType.lower() == "video/vp8":
            payload = sink.vp8.apply(payload)
        out = RtpPacket(
            payload_type=payload_type,
            marker=packet.marker,
            sequence_number=uint16_add(packet.sequence_number, sink.seq_offset),
            timestamp=uint32_add(packet.timestamp, sink.ts_offset),
            ssrc=sender._ssrc,
            payload=payload,
        )
        if sink.last_seq is None or uint16_gt(out.sequence_number, sink.last_seq):
            sink.last_seq = out.sequence_number
        if uint32_gt(out.timestamp, sink.last_ts) or sink.last_sent == 0.0:
            sink.last_ts = out.timestamp
            sink.last_sent = now
        out.extensions.mid = transceiver.mid
        out.extensions.abs_send_time = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
        out.extensions.audio_level = packet.extensions.audio_level
        getattr(sender, f"{_S}rtp_history")[out.sequence_number % RTP_HISTORY_SIZE] = out
        data = out.serialize(getattr(sender, f"{_S}rtp_header_extensions_map"))
        try:
            await sender.transport._send_rtp(data)
        except ConnectionError:
            return
        # What the sender's RTCP sender reports say it sent.
        setattr(sender, f"{_S}ntp_timestamp", clock.current_ntp_time())
        setattr(sender, f"{_S}rtp_timestamp", out.timestamp)
        setattr(sender, f"{_S}octet_count", getattr(sender, f"{_S}octet_count") + len(out.payload))
        setattr(sender, f"{_S}packet_count", getattr(sender, f"{_S}packet_count") + 1)

    async def _may_switch(
        self, sink: _Sink, packet: RtpPacket, codec: RTCRtpCodecParameters
    ) -> bool:
        """Whether ``sink`` may start getting ``packet``'s stream with this packet.

        A layer starts on a keyframe (a decoder cannot start elsewhere); a
        stream with no layers, and a codec whose keyframes cannot be told,
        start at once, with a keyframe asked for.
        """
        if self.kind != "video":
            return True
        keyframe = keyframe_start(codec.mimeType, packet.payload)
        if keyframe is not True:
            await self.request_keyframe(packet.ssrc)
        return keyframe is not False or self._streams[packet.ssrc].rid is None

    def _switch(
        self, sink: _Sink, packet: RtpPacket, codec: RTCRtpCodecParameters, now: float
    ) -> None:
        """From ``packet`` on, ``sink`` gets ``packet``'s stream, continuing its numbering."""
        if sink.last_seq is None:
            # The first stream: its timestamps as sent, sequence numbers from a random start.
            sink.seq_offset = random.randrange(1 << 16) - packet.sequence_number
            sink.ts_offset = 0
        else:
            sink.seq_offset = uint16_add(sink.last_seq, 1) - packet.sequence_number
            elapsed = max(1, round((now - sink.last_sent) * codec.clockRate))
            sink.ts_offset = uint32_add(sink.last_ts, elapsed) - packet.timestamp
            if codec.mimeType.lower() == "video/vp8":
                sink.vp8.switch(packet.payload)
        previous, sink.current = sink.current, packet.ssrc
        sink.switches += 1
        if previous is not None:
            stream = self._streams[packet.ssrc]
            self._log.debug("relay.layer_switched", rid=stream.rid, switches=sink.switches)

    def _relay_feedback(self, sender: Any, sink: _Sink) -> None:
        """The subscriber's keyframe requests go to the publisher, for the layer it gets."""
        original = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            keyframe = (RTCP_PSFB_PLI, RTCP_PSFB_FIR)
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in keyframe and not self._closed:
                await self.request_keyframe(sink.current)
            await original(packet)

        sender._handle_rtcp_packet = handle
