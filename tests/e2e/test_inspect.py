"""``livekit-lifecycle inspect --web`` against the LoopbackServer: the live-room source."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import aiohttp
import pytest

from livekit_lifecycle._watch import WatchError, WatchSettings
from livekit_lifecycle.inspector import Inspector, RoomSource
from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT, eventually
from tests.e2e.conftest import ROOM, command_env
from tests.e2e.test_watch import _settings as watch_settings

pytestmark = pytest.mark.e2e

COMMAND_TIMEOUT = 60.0


def _settings(server: LoopbackServer, **overrides: Any) -> WatchSettings:
    return watch_settings(server, **{"grace_period": 5.0, **overrides})


async def _rows(url: str) -> list[tuple[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(url + "api/snapshot") as response:
        state = json.loads(await response.text())
    return [(row["key"], row["state"]) for row in state["rows"]]


async def test_room_source_shows_the_room_live(loopback_server: LoopbackServer) -> None:
    await loopback_server.connect("alice", ROOM)
    source = await RoomSource(_settings(loopback_server)).start()
    assert ROOM in source.description
    inspector = await Inspector.start(source)
    try:
        latest: list[tuple[str, str]] = []

        async def shows(expected: list[tuple[str, str]]) -> bool:
            async def check() -> bool:
                latest[:] = await _rows(inspector.url)
                return latest == expected

            deadline = asyncio.get_running_loop().time() + WAIT
            while asyncio.get_running_loop().time() < deadline:
                if await check():
                    return True
                await asyncio.sleep(0.05)
            return False

        assert await shows([("alice", "active")]), latest
        bob = await loopback_server.connect("bob", ROOM)
        assert await shows([("alice", "active"), ("bob", "active")]), latest
        await bob.disconnect()
        assert await shows([("alice", "active"), ("bob", "grace")]), latest
    finally:
        await inspector.aclose()
    assert source.ended is not None and source.ended.done()
    assert await eventually(
        lambda: [p.identity for p in loopback_server.participants(ROOM)] == ["alice"], WAIT
    )


async def test_room_source_reports_bad_credentials(loopback_server: LoopbackServer) -> None:
    with pytest.raises(WatchError, match="rejected the credentials"):
        await RoomSource(_settings(loopback_server, api_secret="x" * 32)).start()


async def test_inspect_command_prints_the_url_and_serves_until_interrupted(
    loopback_server: LoopbackServer,
) -> None:
    await loopback_server.connect("alice", ROOM)
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livekit_lifecycle",
        "inspect",
        "--web",
        "--room",
        ROOM,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=command_env(loopback_server),
    )
    assert command.stdout is not None
    try:
        line = (await asyncio.wait_for(command.stdout.readline(), COMMAND_TIMEOUT)).decode()
        assert line.startswith("inspector: http://127.0.0.1:"), line
        url = line.split()[1]
        assert await _rows(url) == [("alice", "active")]
        command.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(command.wait(), COMMAND_TIMEOUT) == 0
    finally:
        if command.returncode is None:
            command.kill()
            await command.wait()
