"""Probe: the join request the installed SDK sends has the shape the server was built for.

The LoopbackServer reads the Rust SDK's join request (livekit 1.1.21 to 1.2.x). If a new
SDK release changes it, this test fails with the difference, before anything
subtler breaks: re-check the server against the new release, then update
the expected shapes here and the pinned versions in pyproject.toml.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit import rtc
from livekit.rtc._proto.room_pb2 import SimulateScenarioKind

from livekit_loopback import LoopbackServer
from livekit_loopback.support import Recorder

pytestmark = pytest.mark.e2e

ROOM = "probe"
TESTED_WITH = "livekit 1.1.21, 1.2.0 and 1.2.1"
CLIENT_INFO = {
    "sdk": "int",
    "version": "str",
    "protocol": "int",
    "os": "str",
    "os_version": "str",
    "device_model": "str",
    "client_protocol": "int",
    "capabilities": "RepeatedScalarContainer",
}
V1_JOIN = {
    "client_info": CLIENT_INFO,
    "connection_settings": {"auto_subscribe": "bool"},
    "publisher_offer": {"type": "str", "sdp": "str"},
}
V1_RESUME = {
    "client_info": CLIENT_INFO,
    "connection_settings": {"auto_subscribe": "bool"},
    "reconnect": "bool",
    "reconnect_reason": "int",
    "participant_sid": "str",
}
V0_QUERY = [
    "adaptive_stream",
    "auto_subscribe",
    "capabilities",
    "client_protocol",
    "device_model",
    "os",
    "os_version",
    "protocol",
    "sdk",
    "version",
]


def _join_requests(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {k: r.__dict__[k] for k in ("path", "query", "bearer", "reconnect", "join_request")}
        for r in caplog.records
        if r.msg == "signal.join_request"
    ]


def _explain(expected: object, got: object) -> str:
    return (
        "the SDK's join request changed shape: the LoopbackServer was built for the"
        f" requests of {TESTED_WITH}, this is livekit {rtc.__version__}."
        f"\nexpected: {expected}\n     got: {got}\n"
        "Re-check the server against this SDK, then update livekit-loopback/tests/test_probe.py."
    )


async def test_v1_join_and_resume_requests_have_the_expected_shape(
    loopback_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "livekit_loopback")
    room = await loopback_server.connect(
        "alice", ROOM, options=rtc.RoomOptions(single_peer_connection=True)
    )
    events = Recorder.on(room)
    await room.simulate_scenario(SimulateScenarioKind.SIMULATE_SIGNAL_RECONNECT)
    await events.wait_for("reconnected", timeout=20.0)

    expected = [
        {
            "path": "/rtc/v1",
            "query": ["join_request"],
            "bearer": True,
            "reconnect": False,
            "join_request": V1_JOIN,
        },
        {
            "path": "/rtc/v1",
            "query": ["join_request"],
            "bearer": True,
            "reconnect": True,
            "join_request": V1_RESUME,
        },
    ]
    got = _join_requests(caplog)
    assert got == expected, _explain(expected, got)


async def test_v0_join_request_has_the_expected_shape(
    loopback_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "livekit_loopback")
    await loopback_server.connect(
        "alice", ROOM, options=rtc.RoomOptions(single_peer_connection=False)
    )
    expected = [
        {
            "path": "/rtc",
            "query": V0_QUERY,
            "bearer": True,
            "reconnect": False,
            "join_request": None,
        }
    ]
    got = _join_requests(caplog)
    assert got == expected, _explain(expected, got)


async def test_the_default_room_options_use_rtc_v1(
    loopback_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The e2e tests connect with default options: they exercise /rtc/v1.
    caplog.set_level(logging.DEBUG, "livekit_loopback")
    await loopback_server.connect("alice", ROOM)
    assert [r["path"] for r in _join_requests(caplog)] == ["/rtc/v1"]
