"""Simulcast on aiortc: the answer that accepts layers, packets routed by mid, keyframes found.

A camera published with the SDK's default options offers one video section
with several RTP streams, one per layer (``a=rid:f send``, ``a=rid:h send``,
``a=rid:q send``, ``a=simulcast:send f;h;q``), told apart by the RID header
extension (``rtp-stream-id``) on their packets, with no ``a=ssrc`` lines.
aiortc takes one stream per section and knows no RID, so three things are
added around it:

- :func:`answer_sdp` writes into aiortc's answer what livekit-server's
  answer says: the RID header extensions (libwebrtc offers a simulcast
  section only once RID was negotiated in the bundle) and, when layers are
  wanted, ``a=rid:<rid> recv`` and ``a=simulcast:recv`` for the offered ones;
- :func:`route_by_mid` makes a DTLS transport hand a packet whose SSRC it does
  not know to the receiver of the section its MID header extension names
  (aiortc routes such packets by payload type, which two video tracks of one
  publisher share), and reads the RID extensions into ``packet.extensions``;
- :func:`keyframe_start` says whether a packet starts a keyframe (VP8, VP9,
  H.264, AV1): a subscriber is switched to another layer on one;
- :class:`Vp8Numbering` keeps a subscriber's VP8 picture ids continuous across
  a switch, as livekit-server's VP8 munger does: each layer numbers its own
  pictures, and a receiver drops a keyframe whose picture id is older than
  the last one it decoded, then decodes the new layer's deltas on the old
  layer's pictures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

__all__ = [
    "RID_EXTENSIONS",
    "Vp8Numbering",
    "answer_sdp",
    "extension_ids",
    "keyframe_start",
    "route_by_mid",
]

RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
RID_EXTENSIONS = (RID, REPAIRED_RID)


def _sections(sdp: str) -> list[list[str]]:
    """``sdp``'s lines, split before each ``m=`` line (the session part first)."""
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _mid(section: list[str]) -> str | None:
    return next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)


def extension_ids(sdp: str, mid: str) -> dict[str, int]:
    """Header extension uri -> id in the section ``mid`` of ``sdp``."""
    for section in _sections(sdp)[1:]:
        if _mid(section) == mid:
            found: dict[str, int] = {}
            for line in section:
                if line.startswith("a=extmap:"):
                    head, _, rest = line[len("a=extmap:") :].partition(" ")
                    uri = rest.split()[0] if rest.split() else ""
                    ident = head.split("/", 1)[0]
                    if ident.isdigit() and uri:
                        found[uri] = int(ident)
            return found
    return {}


def offered_rids(section: list[str]) -> list[str]:
    """The rids a section of an offer sends, in its ``a=simulcast`` order."""
    for line in section:
        if line.startswith("a=simulcast:send "):
            streams = line[len("a=simulcast:send ") :].split()[0]
            return [rid.lstrip("~") for alt in streams.split(";") for rid in alt.split(",")]
    return []


def answer_sdp(offer: str, answer: str, *, simulcast: bool) -> str:
    """aiortc's ``answer`` to ``offer``, accepting RID and (with ``simulcast``) the offered layers.

    aiortc knows no RID extension, so it leaves them out of its answers; but
    libwebrtc offers a simulcast section only if RID was negotiated before in
    the bundle ("negotiates simulcast but does not negotiate the RID RTP
    header extension"), so without them a camera published with the SDK's
    default options fails to negotiate. Without ``simulcast`` the answer
    leaves ``a=simulcast`` out, and the publisher sends one layer.
    """
    offered: dict[str, list[str]] = {}
    rids: dict[str, list[str]] = {}
    for section in _sections(offer)[1:]:
        mid = _mid(section)
        if mid is not None and section[0].startswith("m=video"):
            offered[mid] = [
                line
                for line in section
                if line.startswith("a=extmap:") and line.split()[-1] in RID_EXTENSIONS
            ]
            rids[mid] = offered_rids(section)
    out: list[str] = []
    for section in _sections(answer):
        mid = _mid(section)
        if mid is None or not section[0].startswith("m=video") or mid not in offered:
            out.extend(section)
            continue
        extra = [line for line in offered[mid] if line not in section]
        if extra:
            at = max(
                i for i, line in enumerate(section) if line.startswith(("a=extmap:", "a=mid:"))
            )
            section = [*section[: at + 1], *extra, *section[at + 1 :]]
        receiving = "a=recvonly" in section or "a=sendrecv" in section
        if simulcast and receiving and len(rids[mid]) > 1:
            section = _with_start_bitrate(section)
            section = [
                *section,
                *(f"a=rid:{rid} recv" for rid in rids[mid]),
                "a=simulcast:recv " + ";".join(rids[mid]),
            ]
        out.extend(section)
    return "\r\n".join(out) + "\r\n"


START_BITRATE_KBPS = 5000
"""kbit/s a publisher's bandwidth estimate starts at for a simulcast section (libwebrtc: 300).

livekit-server gives publishers transport-wide congestion control feedback,
with which libwebrtc probes the link and, on a LAN, reaches every layer in
a second or two. aiortc gives none (only REMB), and from libwebrtc's default
start the publisher sends the lowest layer only and ramps up by 8 % a
second; starting high, it sends every layer at once.
"""


def _with_start_bitrate(section: list[str]) -> list[str]:
    """``section`` whose codecs say ``x-google-start-bitrate`` (libwebrtc reads the answer's)."""
    parameter = f"x-google-start-bitrate={START_BITRATE_KBPS}"
    codecs = [
        line[len("a=rtpmap:") :].split()[0]
        for line in section
        if line.startswith("a=rtpmap:") and " rtx/" not in line
    ]
    fmtp = "a=fmtp:"
    with_fmtp = {line[len(fmtp) :].split()[0] for line in section if line.startswith(fmtp)}
    out = [
        _with_parameter(line, parameter)
        if line.startswith(fmtp) and line[len(fmtp) :].split()[0] in codecs
        else line
        for line in section
    ]
    return out + [f"a=fmtp:{pt} {parameter}" for pt in codecs if pt not in with_fmtp]


def _with_parameter(fmtp_line: str, parameter: str) -> str:
    """``fmtp_line`` with ``parameter`` (``name=value``) set, replacing the same name's value."""
    head, _, text = fmtp_line.partition(" ")
    name = parameter.split("=", 1)[0]
    kept = [p for p in text.split(";") if p and p.split("=", 1)[0] != name]
    return f"{head} {';'.join([*kept, parameter])}"


def route_by_mid(transport: Any, extensions: Mapping[str, int]) -> None:
    """Route ``transport``'s packets of unknown SSRC by their MID; parse the RID extensions.

    ``transport`` is an aiortc ``RTCDtlsTransport``; ``extensions`` the offer's
    header extension ids (uri -> id). Idempotent.
    """
    rid_ids = [
        RTCRtpHeaderExtensionParameters(id=ident, uri=uri)
        for uri, ident in extensions.items()
        if uri in RID_EXTENSIONS
    ]
    if rid_ids:
        transport._rtp_header_extensions_map.configure(RTCRtpParameters(headerExtensions=rid_ids))
    router = transport._rtp_router
    if getattr(router, "_routes_by_mid", False):
        return
    by_payload_type = router.route_rtp

    def route(packet: Any) -> Any:
        mid = packet.extensions.mid
        if mid is not None:
            receiver = router.mid_table.get(mid)
            if receiver is not None:
                router.ssrc_table[packet.ssrc] = receiver
                return receiver
        return by_payload_type(packet)

    router.route_rtp = route
    router._routes_by_mid = True


def _vp8_keyframe(payload: bytes) -> bool:
    # RFC 7741: the payload descriptor, then (first packet of a frame) the VP8 header.
    if len(payload) < 1 or not payload[0] & 0x10 or payload[0] & 0x07:
        return False  # not the start of partition 0
    at = 1
    if payload[0] & 0x80:  # X: extension bits follow
        if len(payload) < 2:
            return False
        bits = payload[1]
        at = 2
        if bits & 0x80:  # I: picture id, one or two bytes
            if len(payload) <= at:
                return False
            at += 2 if payload[at] & 0x80 else 1
        if bits & 0x40:  # L: TL0PICIDX
            at += 1
        if bits & 0x30:  # T or K: TID/Y/KEYIDX
            at += 1
    return len(payload) > at and not payload[at] & 0x01


def _vp9_keyframe(payload: bytes) -> bool:
    # draft-ietf-payload-vp9: I P L F B E V Z; a keyframe's first packet has B and not P.
    return len(payload) > 0 and bool(payload[0] & 0x08) and not payload[0] & 0x40


def _h264_keyframe(payload: bytes) -> bool:
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):  # IDR slice, SPS
        return True
    if nal == 24:  # STAP-A: 16-bit sizes, each followed by a NAL unit
        at = 1
        while at + 2 < len(payload):
            size = int.from_bytes(payload[at : at + 2], "big")
            if payload[at + 2] & 0x1F in (5, 7):
                return True
            at += 2 + size
        return False
    if nal == 28 and len(payload) > 1:  # FU-A: the start of a fragmented IDR
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    return False


def _av1_keyframe(payload: bytes) -> bool:
    # AV1 RTP: aggregation header Z Y W W N; N starts a new coded video sequence.
    return len(payload) > 0 and bool(payload[0] & 0x08)


_KEYFRAMES = {
    "video/vp8": _vp8_keyframe,
    "video/vp9": _vp9_keyframe,
    "video/h264": _h264_keyframe,
    "video/av1": _av1_keyframe,
}


def keyframe_start(mime_type: str, payload: bytes) -> bool | None:
    """Whether ``payload`` (an RTP payload of ``mime_type``) starts a keyframe; None: cannot tell.

    Read from the payload descriptor and the codec's first header bytes, which
    end-to-end encryption leaves in the clear.
    """
    find = _KEYFRAMES.get(mime_type.lower())
    return None if find is None else find(payload)


class _Vp8Descriptor:
    """Where the numbered fields of a VP8 payload descriptor are (RFC 7741 section 4.2)."""

    def __init__(self, payload: bytes) -> None:
        self.picture_id: int | None = None
        self.picture_id_at = 0
        self.long_picture_id = False
        self.tl0: int | None = None
        self.tl0_at = 0
        self.keyidx: int | None = None
        self.keyidx_at = 0
        if len(payload) < 2 or not payload[0] & 0x80:
            return
        bits, at = payload[1], 2
        if bits & 0x80 and len(payload) > at:  # I
            self.picture_id_at = at
            self.long_picture_id = bool(payload[at] & 0x80)
            if self.long_picture_id and len(payload) > at + 1:
                self.picture_id = ((payload[at] & 0x7F) << 8) | payload[at + 1]
                at += 2
            else:
                self.picture_id = payload[at] & 0x7F
                at += 1
        if bits & 0x40 and len(payload) > at:  # L
            self.tl0, self.tl0_at = payload[at], at
            at += 1
        if bits & 0x10 and len(payload) > at:  # K
            self.keyidx, self.keyidx_at = payload[at] & 0x1F, at


class Vp8Numbering:
    """One subscriber's VP8 picture ids, TL0PICIDX and KEYIDX, continuous across layer switches.

    Offsets are zero until the first switch: a stream nobody switched away
    from goes through byte for byte.
    """

    def __init__(self) -> None:
        self._picture_id = self._tl0 = self._keyidx = 0
        self._last: tuple[int | None, int | None, int | None] = (None, None, None)

    def switch(self, payload: bytes) -> None:
        """The keyframe ``payload`` starts a new layer: number it after the last picture sent."""
        new = _Vp8Descriptor(payload)
        picture_id, tl0, keyidx = self._last
        if picture_id is not None and new.picture_id is not None:
            self._picture_id = picture_id + 1 - new.picture_id
        if tl0 is not None and new.tl0 is not None:
            self._tl0 = tl0 + 1 - new.tl0
        if keyidx is not None and new.keyidx is not None:
            self._keyidx = keyidx + 1 - new.keyidx

    def apply(self, payload: bytes) -> bytes:
        """``payload`` renumbered (the same bytes while no switch happened)."""
        found = _Vp8Descriptor(payload)
        if not (self._picture_id or self._tl0 or self._keyidx):
            self._last = (found.picture_id, found.tl0, found.keyidx)
            return payload
        out = bytearray(payload)
        picture_id = tl0 = keyidx = None
        if found.picture_id is not None:
            at = found.picture_id_at
            if found.long_picture_id:
                picture_id = (found.picture_id + self._picture_id) & 0x7FFF
                out[at], out[at + 1] = 0x80 | picture_id >> 8, picture_id & 0xFF
            else:
                picture_id = (found.picture_id + self._picture_id) & 0x7F
                out[at] = picture_id
        if found.tl0 is not None:
            tl0 = (found.tl0 + self._tl0) & 0xFF
            out[found.tl0_at] = tl0
        if found.keyidx is not None:
            keyidx = (found.keyidx + self._keyidx) & 0x1F
            out[found.keyidx_at] = (out[found.keyidx_at] & 0xE0) | keyidx
        self._last = (picture_id, tl0, keyidx)
        return bytes(out)
