"""Simulcast's pure parts: the answer, keyframes in RTP payloads, VP8 renumbering, layer choice."""

from __future__ import annotations

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit_loopback._rtp_relay import Layer, LayerChoice, wanted_rank
from livekit_loopback._simulcast import (
    START_BITRATE_KBPS,
    Vp8Numbering,
    answer_sdp,
    extension_ids,
    keyframe_start,
)

OFFER = "\r\n".join(
    [
        "v=0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:1",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "a=rid:f send",
        "a=rid:h send",
        "a=rid:q send",
        "a=simulcast:send f;h;q",
        "",
    ]
)
ANSWER = "\r\n".join(
    [
        "v=0",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:1",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=recvonly",
        "a=rtpmap:96 VP8/90000",
        "",
    ]
)


def test_the_answer_accepts_rid_and_the_offered_layers() -> None:
    answer = answer_sdp(OFFER, ANSWER, simulcast=True).splitlines()
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in answer
    assert [line for line in answer if line.startswith("a=rid:")] == [
        "a=rid:f recv",
        "a=rid:h recv",
        "a=rid:q recv",
    ]
    assert "a=simulcast:recv f;h;q" in answer
    assert f"a=fmtp:96 x-google-start-bitrate={START_BITRATE_KBPS}" in answer


def test_without_simulcast_the_answer_takes_one_layer() -> None:
    answer = answer_sdp(OFFER, ANSWER, simulcast=False).splitlines()
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in answer
    assert not [line for line in answer if line.startswith(("a=rid:", "a=simulcast"))]


def test_extension_ids_are_read_per_section() -> None:
    assert extension_ids(OFFER, "1")["urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"] == 10
    assert extension_ids(OFFER, "2") == {}


# VP8 descriptor: X and S set, PID 0; I (15-bit picture id 0x1234), L (TL0PICIDX 7), T/K.
_VP8_HEAD = bytes([0x90, 0xF0, 0x80 | 0x12, 0x34, 0x07, 0x21])


@pytest.mark.parametrize(
    ("mime", "payload", "expected"),
    [
        ("video/VP8", _VP8_HEAD + bytes([0x10, 0x02]), True),  # P bit clear: keyframe
        ("video/VP8", _VP8_HEAD + bytes([0x11, 0x02]), False),  # P bit set: delta
        ("video/VP8", bytes([0x80, 0x80, 0x05, 0x10]), False),  # not a partition start
        ("video/vp8", bytes([0x10, 0x00]), True),  # no extensions
        ("video/H264", bytes([0x65, 0x88]), True),  # IDR slice
        ("video/H264", bytes([0x41, 0x9A]), False),  # non-IDR slice
        ("video/H264", bytes([0x7C, 0x85, 0x00]), True),  # FU-A starting an IDR
        ("video/H264", bytes([0x7C, 0x05, 0x00]), False),  # FU-A continuing it
        ("video/H264", bytes([0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]), True),  # STAP-A
        ("video/VP9", bytes([0x88]), True),  # B set, P clear
        ("video/VP9", bytes([0xC8]), False),  # P set: inter-picture
        ("video/AV1", bytes([0x18]), True),  # N: a new coded video sequence
        ("video/AV1", bytes([0x10]), False),
        ("audio/opus", bytes([0x00]), None),
    ],
)
def test_keyframes_are_found_in_the_payload(mime: str, payload: bytes, expected: bool) -> None:
    assert keyframe_start(mime, payload) is expected


def _vp8(picture_id: int, tl0: int, keyidx: int) -> bytes:
    return bytes(
        [0x90, 0xF0, 0x80 | picture_id >> 8, picture_id & 0xFF, tl0, 0x20 | keyidx, 0x10, 0x02]
    )


def test_vp8_numbering_goes_through_unchanged_until_a_switch() -> None:
    numbering = Vp8Numbering()
    assert numbering.apply(_vp8(100, 5, 3)) == _vp8(100, 5, 3)


def test_vp8_numbering_continues_across_a_switch() -> None:
    numbering = Vp8Numbering()
    numbering.apply(_vp8(100, 5, 3))
    numbering.apply(_vp8(101, 6, 3))
    other_layer = _vp8(0x7FFF, 250, 30)
    numbering.switch(other_layer)
    assert numbering.apply(other_layer) == _vp8(102, 7, 4)
    # And wraps as the field does.
    assert numbering.apply(_vp8(0, 251, 30)) == _vp8(103, 8, 4)


LAYERS = [
    Layer("q", quality=0, width=320, height=180),
    Layer("h", quality=1, width=640, height=360),
    Layer("f", quality=2, width=1280, height=720),
]


@pytest.mark.parametrize(
    ("choice", "rank"),
    [
        (LayerChoice(), 2),
        (LayerChoice(quality=0), 0),
        (LayerChoice(quality=1), 1),
        (LayerChoice(width=320, height=180), 0),
        (LayerChoice(width=321, height=100), 1),
        (LayerChoice(width=4000, height=3000), 2),
    ],
)
def test_a_subscriber_gets_the_layer_its_quality_or_size_asks_for(
    choice: LayerChoice, rank: int
) -> None:
    assert wanted_rank(LAYERS, choice) == rank


def test_with_two_layers_high_is_the_upper_one() -> None:
    # What the SDK announces for a 640x360 camera: two layers, LOW and MEDIUM.
    two = [Layer("q", 0, 640, 360), Layer("h", 1, 640, 360)]
    assert wanted_rank(two, LayerChoice(quality=2)) == 1
    assert wanted_rank([], LayerChoice(quality=1)) == 1
