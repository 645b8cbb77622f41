"""Every loopback server test checks it left no task, socket or thread behind."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator

import pytest
from livekit import api

from livekit_loopback import LoopbackServer
from livekit_loopback.support import no_leaks, webrtc_warmed_up

__all__ = ["no_leaks", "webrtc_warmed_up"]

# Without the `testing` extra there is no server to test.
collect_ignore_glob = [] if importlib.util.find_spec("aiortc") else ["test_*.py"]


@pytest.fixture(autouse=True)
def _leak_check(no_leaks: None) -> None:
    """Pulls ``no_leaks`` in first, so its checks run after every other teardown."""


@pytest.fixture
async def lkapi(loopback_server: LoopbackServer) -> AsyncIterator[api.LiveKitAPI]:
    """livekit-api's own client (RoomService, AgentDispatchService...) for the test's server."""
    client = api.LiveKitAPI(
        loopback_server.url, loopback_server.api_key, loopback_server.api_secret
    )
    try:
        yield client
    finally:
        await client.aclose()
