"""The loopback server's pure parts: tokens, join request decoding, SDP reading, addresses."""

from __future__ import annotations

import base64
import datetime
import gzip
import ipaddress
import socket

import pytest

from livekit_loopback.redis_server import free_ports

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit import api
from livekit.protocol import models
from livekit.protocol import rtc as signal

from livekit_loopback import ice_addresses
from livekit_loopback._peer import sending_tracks
from livekit_loopback._signal import (
    JoinRequestError,
    decode_join_request,
    parse_join,
)
from livekit_loopback._tokens import (
    AuthError,
    TokenAuthority,
    bearer_token,
)

SECRET = "s" * 32


# --------------------------------------------------------------------------- tokens


def test_issued_token_verifies_into_a_join_grant() -> None:
    authority = TokenAuthority("key", SECRET)
    token = authority.issue(
        "alice",
        "room",
        name="Alice",
        metadata="m",
        attributes={"user": "42"},
        kind="agent",
        can_publish=False,
        hidden=True,
        can_update_own_metadata=True,
    )
    grant = authority.verify_join(token)
    assert (grant.identity, grant.room, grant.name, grant.metadata) == (
        "alice",
        "room",
        "Alice",
        "m",
    )
    assert dict(grant.attributes) == {"user": "42"}
    assert grant.kind == models.ParticipantInfo.AGENT
    assert (grant.hidden, grant.can_publish, grant.can_subscribe) == (True, False, True)
    assert grant.can_update_metadata
    permission = grant.permission()
    assert permission.hidden and not permission.can_publish and permission.can_update_metadata


def test_default_token_is_a_standard_publisher() -> None:
    authority = TokenAuthority("key", SECRET)
    grant = authority.verify_join(authority.issue("bob", "room"))
    assert grant.kind == models.ParticipantInfo.STANDARD
    assert (grant.hidden, grant.can_publish, grant.can_update_metadata) == (False, True, False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"identity": "", "room": "r"}, ValueError, "non-empty"),
        ({"identity": "a", "room": ""}, ValueError, "non-empty"),
        ({"identity": "a", "room": "r", "kind": "robot"}, ValueError, "unknown participant kind"),
        ({"identity": "a", "room": "r", "can_fly": True}, TypeError, "can_fly"),
    ],
)
def test_bad_token_requests_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        TokenAuthority("key", SECRET).issue(**kwargs)  # type: ignore[arg-type]


def test_authority_needs_a_key_pair() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        TokenAuthority("", SECRET)


def test_tokens_from_another_key_pair_or_expired_are_rejected_with_401() -> None:
    authority = TokenAuthority("key", SECRET)
    foreign = TokenAuthority("key", "x" * 32).issue("alice", "room")
    expired = authority.issue("alice", "room", ttl=datetime.timedelta(minutes=-5))
    for token in (foreign, expired, "not-a-jwt", ""):
        with pytest.raises(AuthError) as caught:
            authority.verify_join(token)
        assert caught.value.status == 401


def test_tokens_without_a_room_join_grant_are_rejected_with_403() -> None:
    authority = TokenAuthority("key", SECRET)
    no_join = (
        api.AccessToken("key", SECRET)
        .with_identity("alice")
        .with_grants(api.VideoGrants(room_list=True))
        .to_jwt()
    )
    with pytest.raises(AuthError) as caught:
        authority.verify_join(no_join)
    assert caught.value.status == 403


def test_bearer_token_comes_from_the_header_or_the_query() -> None:
    assert bearer_token({"Authorization": "Bearer abc "}, {}) == "abc"
    assert bearer_token({}, {"access_token": "def"}) == "def"
    assert bearer_token({"Authorization": "Basic xyz"}, {}) == ""


# --------------------------------------------------------------------------- join requests


def _wrapped(request: signal.JoinRequest, compress: bool) -> str:
    payload = request.SerializeToString()
    wrapped = signal.WrappedJoinRequest(
        join_request=gzip.compress(payload) if compress else payload,
        compression=signal.WrappedJoinRequest.GZIP if compress else signal.WrappedJoinRequest.NONE,
    )
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode().rstrip("=")


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_v1_join_request_is_decoded(compress: bool) -> None:
    request = signal.JoinRequest(
        client_info=models.ClientInfo(client_protocol=2),
        reconnect=True,
        participant_sid="PA_1",
        publisher_offer=signal.SessionDescription(type="offer", sdp="v=0"),
    )
    params = parse_join("/rtc/v1", {"join_request": _wrapped(request, compress)})
    assert params.single_pc and params.reconnect and params.participant_sid == "PA_1"
    assert params.client_protocol == 2
    assert params.publisher_offer is not None and params.publisher_offer.sdp == "v=0"
    assert params.request == request


def test_v0_join_parameters_come_from_the_query() -> None:
    params = parse_join("/rtc", {"reconnect": "1", "sid": "PA_2", "client_protocol": "x"})
    assert not params.single_pc and params.reconnect and params.participant_sid == "PA_2"
    assert params.client_protocol == 0 and params.publisher_offer is None and params.request is None
    assert not parse_join("/rtc", {}).reconnect


@pytest.mark.parametrize("raw", ["", "!!!", base64.urlsafe_b64encode(b"\xff\xff\xff").decode()])
def test_undecodable_join_requests_are_refused(raw: str) -> None:
    with pytest.raises(JoinRequestError):
        decode_join_request(raw)


def test_gzip_flag_on_a_plain_payload_is_refused() -> None:
    wrapped = signal.WrappedJoinRequest(
        join_request=b"not gzip", compression=signal.WrappedJoinRequest.GZIP
    )
    raw = base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()
    with pytest.raises(JoinRequestError, match="undecodable"):
        decode_join_request(raw)


# --------------------------------------------------------------------------- SDP, addresses

SDP = "\r\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=recvonly",
        "a=msid:- gone-audio",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:1",
        "a=sendonly",
        "a=msid:- mic",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:2",
        "a=sendrecv",
        "a=msid:stream cam",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:3",
        "",
    ]
)


def test_sending_tracks_lists_the_sending_sections_with_their_kind() -> None:
    assert sending_tracks(SDP) == {"mic": "audio", "cam": "video"}
    assert sending_tracks("") == {}


def test_ice_addresses_leave_out_loopback() -> None:
    addresses = [ipaddress.ip_address(a) for a in ice_addresses()]
    assert not any(a.is_loopback or a.is_link_local for a in addresses)


# --------------------------------------------------------------------------- data tracks


def test_a_data_track_request_is_refused_as_livekit_server_refuses_it() -> None:
    from livekit_loopback import _data_tracks as data_tracks

    reason = signal.RequestResponse.Reason
    taken = [models.DataTrackInfo(pub_handle=1, sid="DTR_a", name="sensor")]
    for request, expected in [
        (signal.PublishDataTrackRequest(pub_handle=0, name="x"), reason.INVALID_HANDLE),
        (signal.PublishDataTrackRequest(pub_handle=2, name=""), reason.INVALID_NAME),
        (signal.PublishDataTrackRequest(pub_handle=1, name="x"), reason.DUPLICATE_HANDLE),
        (signal.PublishDataTrackRequest(pub_handle=2, name="sensor"), reason.DUPLICATE_NAME),
    ]:
        answer = data_tracks.publish(taken, request)
        assert isinstance(answer, signal.RequestResponse) and answer.reason == expected
        assert answer.publish_data_track == request
    info = data_tracks.publish(taken, signal.PublishDataTrackRequest(pub_handle=2, name="y"))
    assert isinstance(info, models.DataTrackInfo) and info.sid.startswith("DTR_")


def test_each_data_subscription_gets_its_own_handle_written_into_the_packets() -> None:
    from livekit_loopback import _data_tracks as data_tracks

    subscriptions = data_tracks.DataSubscriptions()
    first = subscriptions.add("alice", "PA_a", "DTR_1")
    second = subscriptions.add("alice", "PA_a", "DTR_2")
    assert first != second and subscriptions.add("alice", "PA_a", "DTR_1") == first
    handles = subscriptions.message().data_track_subscriber_handles.sub_handles
    assert {h: t.track_sid for h, t in handles.items()} == {first: "DTR_1", second: "DTR_2"}
    packet = bytes([0x18, 0x00, 0x00, 0x07]) + bytes(8) + b"payload"
    assert data_tracks.publisher_handle(packet) == 7
    moved = data_tracks.rewritten(packet, second)
    assert data_tracks.publisher_handle(moved) == second and moved[4:] == packet[4:]
    assert subscriptions.remove("DTR_1") and subscriptions.handle_of("DTR_1") is None


def test_free_ports_are_distinct_and_free() -> None:
    # A cluster node's port and its bus port once came out equal from two probes in a
    # row, and the node never started: picked together, they cannot.
    ports = free_ports(8)
    assert len(set(ports)) == 8
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
            again.bind(("127.0.0.1", port))
