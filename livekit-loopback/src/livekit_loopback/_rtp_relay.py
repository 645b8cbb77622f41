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
- **Keyframes.** A subscriber's PLI or FIR is relayed to the publisher as a PLI
  (at most one per :data:`_KEYFRAME_INTERVAL`), and a subscriber's first packet
  triggers one, so video starts with a keyframe.

What it does not do: pick among simulcast layers (aiortc does not receive
simulcast), transcode (a subscriber that did not negotiate the publisher's
codec gets nothing, logged), forward header extensions other than mid, send
time and audio level (aiortc negotiates no others).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiortc import clock
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtpPacket,
    unwrap_rtx,
)

from ._log import get_logger

if TYPE_CHECKING:
    from ._media import ForwardedTrack

__all__ = ["RtpRelay"]

_KEYFRAME_INTERVAL = 0.5
"""Seconds between two keyframe requests to one publisher."""

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


def _same_codec(ours: RTCRtpCodecParameters, theirs: RTCRtpCodecParameters) -> bool:
    if ours.mimeType.lower() != theirs.mimeType.lower() or ours.clockRate != theirs.clockRate:
        return False
    if ours.mimeType.lower() != "video/h264":
        return True
    keys = ("packetization-mode", "profile-level-id")
    return all(
        str(ours.parameters.get(key, "")).lower() == str(theirs.parameters.get(key, "")).lower()
        for key in keys
    )


class _Sink:
    """One subscriber's copy of the stream."""

    def __init__(self, track: ForwardedTrack) -> None:
        self.track = track
        self.offset: int | None = None
        self.payload_types: dict[int, int | None] = {}
        self.hooked = False


class RtpRelay:
    """Forwards the RTP of one publisher's receiver to subscribers' senders."""

    def __init__(self, receiver: RTCRtpReceiver, kind: str, label: str) -> None:
        self.kind = kind
        self.packets = 0
        """RTP packets received from the publisher (for tests and benchmarks)."""
        self._receiver = receiver
        self._sinks: dict[str, _Sink] = {}
        self._media_ssrc: int | None = None
        self._last_keyframe_request = 0.0
        self._closed = False
        self._log = get_logger().bind(relay=label)
        original: Callable[[RtpPacket, int], Awaitable[None]] = receiver._handle_rtp_packet

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            if not self._closed:
                await self._forward(packet)
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
        setattr(receiver, f"{_R}decoder_queue", _NoDecode(getattr(receiver, f"{_R}decoder_queue")))

    def add(self, key: str, track: ForwardedTrack) -> None:
        self._sinks[key] = _Sink(track)

    def remove(self, key: str) -> None:
        self._sinks.pop(key, None)

    def close(self) -> None:
        self._closed = True
        self._sinks.clear()

    async def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (video only; rate-limited)."""
        now = time.monotonic()
        if self.kind != "video" or self._media_ssrc is None:
            return
        if now - self._last_keyframe_request < _KEYFRAME_INTERVAL:
            return
        self._last_keyframe_request = now
        await self._receiver._send_rtcp_pli(self._media_ssrc)

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
        if not packet.payload:
            return  # padding only (bandwidth probes)
        self.packets += 1
        self._media_ssrc = packet.ssrc
        for sink in list(self._sinks.values()):
            await self._send(sink, packet, codec)

    async def _send(self, sink: _Sink, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
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
            self._relay_feedback(sender)
            await self.request_keyframe()
        if sink.offset is None:
            sink.offset = random.randrange(1 << 16) - packet.sequence_number
        out = RtpPacket(
            payload_type=payload_type,
            marker=packet.marker,
            sequence_number=(packet.sequence_number + sink.offset) & 0xFFFF,
            timestamp=packet.timestamp,
            ssrc=sender._ssrc,
            payload=packet.payload,
        )
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

    def _relay_feedback(self, sender: Any) -> None:
        """The subscriber's keyframe requests go to the publisher."""
        original = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            keyframe = (RTCP_PSFB_PLI, RTCP_PSFB_FIR)
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in keyframe and not self._closed:
                await self.request_keyframe()
            await original(packet)

        sender._handle_rtcp_packet = handle
