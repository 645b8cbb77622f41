"""``livekit-lifecycle watch`` against the LoopbackServer: in-process, as a command, errors."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import sys
from typing import Any

import pytest

from livekit_lifecycle import State
from livekit_lifecycle._watch import JsonRenderer, LineRenderer, Watcher, WatchSettings
from livekit_lifecycle.cli import main
from livekit_loopback import LoopbackServer
from livekit_loopback.support import WAIT
from tests.e2e.conftest import ROOM, command_env

pytestmark = pytest.mark.e2e

COMMAND_TIMEOUT = 60.0


def _settings(server: LoopbackServer, **overrides: Any) -> WatchSettings:
    fields: dict[str, Any] = {
        "url": server.url,
        "room": ROOM,
        "api_key": server.api_key,
        "api_secret": server.api_secret,
        "grace_period": 0.2,
        "connect_timeout": WAIT,
    }
    fields.update(overrides)
    return WatchSettings(**fields)


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_watcher_reports_every_session_live(loopback_server: LoopbackServer) -> None:
    already_there = await loopback_server.connect("alice", ROOM)
    out = io.StringIO()
    watcher = Watcher(_settings(loopback_server), JsonRenderer(out))
    stop = asyncio.Event()
    run = asyncio.create_task(watcher.run(stop))
    try:
        await asyncio.wait_for(watcher.ready.wait(), WAIT)
        manager = watcher.manager
        assert manager is not None
        await manager.wait_for("alice", State.ACTIVE, WAIT)  # adopted on arrival
        bob = await loopback_server.connect("bob", ROOM)
        await manager.wait_for("bob", State.ACTIVE, WAIT)
        removed = asyncio.get_running_loop().create_future()
        manager.once("removed", removed.set_result)
        await bob.disconnect()
        assert (await asyncio.wait_for(removed, WAIT)).key == "bob"

        # The observer is hidden: users do not see it.
        assert list(already_there.remote_participants) == []
        observer = loopback_server.participant(ROOM, watcher.settings.identity)
        assert observer is not None and observer.hidden
    finally:
        stop.set()
        assert await asyncio.wait_for(run, WAIT) == 0

    records = _records(out.getvalue())
    assert records[0]["event"] == "connected" and records[0]["room"] == ROOM
    bob_path = [
        (r["source"], r["trigger"], r["dest"])
        for r in records
        if r["event"] == "transition" and r["key"] == "bob"
    ]
    assert bob_path == [
        ("connecting", "activate", "active"),
        ("active", "disconnect", "disconnecting"),
        ("disconnecting", "cleanup_done", "cleaned"),
        ("cleaned", "hold", "grace"),
        ("grace", "expire", "removed"),
    ]
    assert {r["key"] for r in records if r["event"] == "created"} == {"alice", "bob"}
    summary = records[-1]
    assert summary["event"] == "summary"
    assert summary["sessions"]["bob"]["state"] == "removed"
    assert summary["sessions"]["bob"]["cleanups"] == 1
    # alice was still connected when the watcher shut its own manager down
    assert summary["sessions"]["alice"]["state"] == "removed"
    assert summary["sessions"]["alice"]["trigger"] == "release"


async def test_watcher_ends_when_the_room_is_deleted(loopback_server: LoopbackServer) -> None:
    await loopback_server.connect("alice", ROOM)
    out = io.StringIO()
    watcher = Watcher(_settings(loopback_server), LineRenderer(out))
    run = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.ready.wait(), WAIT)
    assert watcher.manager is not None
    await watcher.manager.wait_for("alice", State.ACTIVE, WAIT)

    await loopback_server.close_room(ROOM)

    assert await asyncio.wait_for(run, WAIT) == 0
    text = out.getvalue()
    assert "the observer was disconnected (ROOM_DELETED)" in text
    assert "summary: 1 session(s)" in text


async def test_watch_command_streams_json_until_interrupted(
    loopback_server: LoopbackServer,
) -> None:
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livekit_lifecycle",
        "watch",
        "--room",
        ROOM,
        "--format",
        "json",
        "--grace",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=command_env(loopback_server),
    )
    assert command.stdout is not None
    seen: list[dict[str, Any]] = []

    async def read_until(event: str, **fields: Any) -> None:
        assert command.stdout is not None
        while True:
            line = await asyncio.wait_for(command.stdout.readline(), COMMAND_TIMEOUT)
            assert line, f"watch ended before {event} {fields}: {seen}"
            seen.append(json.loads(line))
            if seen[-1]["event"] == event and all(seen[-1].get(k) == v for k, v in fields.items()):
                return

    try:
        await read_until("connected")
        await loopback_server.connect("alice", ROOM)
        await read_until("transition", key="alice", dest="active")
        command.send_signal(signal.SIGINT)
        await read_until("summary")
        assert await asyncio.wait_for(command.wait(), COMMAND_TIMEOUT) == 0
    finally:
        if command.returncode is None:
            command.kill()
            await command.wait()
    assert seen[-1]["sessions"]["alice"]["state"] == "removed"


async def test_watch_command_rejects_bad_credentials(loopback_server: LoopbackServer) -> None:
    code, err = await _watch(
        "--url", loopback_server.url, "--api-key", loopback_server.api_key, "--api-secret", "x" * 32
    )
    assert code == 1
    assert "rejected the credentials (401" in err and "check the API key and secret" in err
    assert loopback_server.participants(ROOM) == []


async def test_watch_command_reports_an_unreachable_server() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, err = await _watch(
        "--url", f"ws://127.0.0.1:{port}", "--api-key", "k", "--api-secret", "s"
    )
    assert code == 1 and f"cannot reach ws://127.0.0.1:{port}" in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--url", "ftp://example.com"], "bad URL 'ftp://example.com'"),
        (["--url", "ws://host:99999"], "bad URL"),
        (["--url", "not a url"], "bad URL"),
        ([], "missing a server URL (--url or LIVEKIT_URL)"),
        (["--url", "ws://localhost:7880", "--api-key", "k"], "missing an API secret"),
        (["--url", "ws://h", "--api-key", "k", "--api-secret", "s", "--grace", "-1"], "--grace"),
        (
            ["--url", "ws://h", "--api-key", "k", "--api-secret", "s", "--timeout", "nan"],
            "--timeout",
        ),
        (
            ["--url", "ws://h", "--api-key", "k", "--api-secret", "s", "--duration", "0"],
            "--duration",
        ),
    ],
)
def test_watch_command_usage_errors(
    arguments: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert main(["watch", "--room", ROOM, *arguments]) == 2
    assert message in capsys.readouterr().err


async def _watch(*arguments: str) -> tuple[int, str]:
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livekit_lifecycle",
        "watch",
        "--room",
        ROOM,
        "--timeout",
        "5",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(command.communicate(), COMMAND_TIMEOUT)
    assert command.returncode is not None
    return command.returncode, err.decode()
