"""VP9 and AV1: negotiated when RTP is forwarded as received, though aiortc cannot decode them.

aiortc negotiates only the codecs it can decode and encode (Opus, G.722,
PCMU, PCMA, VP8, H.264), from one list shared by every ``RTCPeerConnection``
of the process (``aiortc.codecs.CODECS``). The RTP relay decodes nothing, so
it can forward VP9 and AV1 as well: :func:`accept_forwarded_codecs` adds them
to that list, once, when the first forwarding peer is made. Peers that do
decode (``media="transcode"``) then keep to the decodable ones
(:func:`decodable_only`), as before.

aiortc takes any VP9 (or AV1) for any other, answers with its own (empty)
format parameters, and keeps its own payload type when the offer's is below
96: :func:`as_offered` puts the offer's back (``profile-id``, AV1's
``profile``, ``level-idx``, ``tier``), so a publisher's profile 2 stays
profile 2 and each side reads the payload type it wrote.
"""

from __future__ import annotations

from aiortc import RTCRtpTransceiver
from aiortc.codecs import CODECS, get_capabilities
from aiortc.exceptions import OperationError
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters
from aiortc.sdp import parameters_from_sdp

__all__ = ["FORWARDED_ONLY", "accept_forwarded_codecs", "as_offered", "decodable_only"]

FORWARDED_ONLY = ("video/vp9", "video/av1")
"""Codecs the server forwards and cannot decode, in lower case."""

# aiortc's own video payload types are 97-102 (VP8, two H.264, each with RTX).
_PAYLOAD_TYPES = {"video/VP9": 103, "video/AV1": 105}


def accept_forwarded_codecs() -> None:
    """Let every aiortc peer of this process negotiate VP9 and AV1 (idempotent)."""
    known = {codec.mimeType.lower() for codec in CODECS["video"]}
    for mime_type, payload_type in _PAYLOAD_TYPES.items():
        if mime_type.lower() in known:
            continue
        CODECS["video"] += [
            RTCRtpCodecParameters(
                mimeType=mime_type,
                clockRate=90000,
                payloadType=payload_type,
                rtcpFeedback=[
                    RTCRtcpFeedback(type="nack"),
                    RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="goog-remb"),
                ],
            ),
            RTCRtpCodecParameters(
                mimeType="video/rtx",
                clockRate=90000,
                payloadType=payload_type + 1,
                parameters={"apt": payload_type},
            ),
        ]


def _decodable(codecs: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    dropped = {c.payloadType for c in codecs if c.mimeType.lower() in FORWARDED_ONLY}
    return [
        c for c in codecs if c.payloadType not in dropped and c.parameters.get("apt") not in dropped
    ]


def decodable_only(transceiver: RTCRtpTransceiver) -> None:
    """``transceiver`` negotiates (now, and in offers to come) only codecs aiortc decodes.

    Raises:
        OperationError: when the codecs negotiated so far were all undecodable
            (what aiortc raises for a section it has no codec for).
    """
    codecs = _decodable(transceiver._codecs)
    if transceiver._codecs and not codecs:
        raise OperationError(f"no decodable {transceiver.kind} codec (media='transcode')")
    transceiver._codecs = codecs
    transceiver._preferred_codecs = [
        capability
        for capability in get_capabilities(transceiver.kind).codecs
        if capability.mimeType.lower() not in FORWARDED_ONLY
    ]


def as_offered(transceiver: RTCRtpTransceiver, offer: str) -> None:
    """``transceiver``'s VP9 and AV1 take the payload types and parameters ``offer`` gave them.

    aiortc adopts an offered payload type only in 96-127, and libwebrtc
    numbers AV1 45 (it runs out of the upper range): the answer would name
    another type than the one the client sends and receives with.
    """
    if transceiver.mid is None:
        return
    offered = [c for c in _rtpmap(offer, transceiver.mid) if c[1].lower() in FORWARDED_ONLY]
    ours = [c for c in transceiver._codecs if c.mimeType.lower() in FORWARDED_ONLY]
    # find_common_codecs made one entry per offered codec aiortc knows, in offer order.
    for codec, (payload_type, _, parameters) in zip(ours, offered, strict=False):
        codec.payloadType = payload_type
        codec.parameters = parameters


def _rtpmap(sdp: str, mid: str) -> list[tuple[int, str, dict[str, int | str | None]]]:
    """(payload type, mime type, format parameters) of each codec of section ``mid`` of ``sdp``."""
    kind = ""
    section_mid = None
    names: dict[int, str] = {}
    fmtp: dict[int, str] = {}
    for line in [*sdp.splitlines(), "m=end"]:
        if line.startswith("m="):
            if section_mid == mid:
                break
            kind, section_mid, names, fmtp = line[2:].split(" ", 1)[0], None, {}, {}
        elif line.startswith("a=mid:"):
            section_mid = line[len("a=mid:") :].strip()
        elif line.startswith(("a=rtpmap:", "a=fmtp:")):
            head, _, text = line.partition(" ")
            payload_type = head.split(":", 1)[1]
            if payload_type.isdigit():
                if line.startswith("a=rtpmap:"):
                    names[int(payload_type)] = f"{kind}/{text.split('/', 1)[0]}"
                else:
                    fmtp[int(payload_type)] = text
    if section_mid != mid:
        return []
    return [(pt, name, parameters_from_sdp(fmtp.get(pt, ""))) for pt, name in names.items()]
