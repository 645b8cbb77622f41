"""An agent process killed with SIGKILL, and its replacement picking up the room's sessions.

Process 1 (tests/e2e/agent_process.py) runs the agent side with a RedisStore;
users alice and bob are real clients of the LoopbackServer; bob leaves and is
in grace when process 1 is killed. This test's process then attaches a new
manager to the same room and store, as a redeployed agent would.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State
from livekit_lifecycle.stores import RedisStore
from livekit_loopback import LoopbackServer
from livekit_loopback.redis_server import RedisServer
from livekit_loopback.support import WAIT
from tests.e2e.conftest import ROOM

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

AGENT_PROCESS = Path(__file__).with_name("agent_process.py")
GRACE = 4.0


async def read_until(stream: asyncio.StreamReader, expected: str, seen: list[str]) -> None:
    while expected not in seen:
        line = await asyncio.wait_for(stream.readline(), WAIT * 2)
        assert line, f"process 1 exited before printing {expected!r}: {seen}"
        seen.append(line.decode().strip())


async def test_a_killed_agent_process_is_replaced_without_losing_sessions(
    loopback_server: LoopbackServer, redis_server: RedisServer
) -> None:
    namespace = f"crash{uuid.uuid4().hex[:6]}"
    store = RedisStore.from_url(redis_server.url, namespace=namespace)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(AGENT_PROCESS),
        loopback_server.url,
        loopback_server.token("agent-1", ROOM, kind="agent"),
        redis_server.url,
        namespace,
        str(GRACE),
        stdout=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        await read_until(process.stdout, "ready", seen)
        alice = await loopback_server.connect("alice", ROOM)
        bob = await loopback_server.connect("bob", ROOM)
        await read_until(process.stdout, "state alice active", seen)
        await read_until(process.stdout, "state bob active", seen)
        bob_sid = bob.local_participant.sid
        await bob.disconnect()
        await read_until(process.stdout, f"cleanup bob {bob_sid}", seen)
        await read_until(process.stdout, "state bob grace", seen)

        async def written() -> dict[str, tuple[str, str | None]]:
            return {r.key: (r.state, r.user_id) for r in await store.load(ROOM)}

        deadline = time.monotonic() + WAIT
        while await written() != {"alice": ("active", "u-alice"), "bob": ("grace", "u-bob")}:
            assert time.monotonic() < deadline, await written()
            await asyncio.sleep(0.02)
        bob_deadline = next(r for r in await store.load(ROOM) if r.key == "bob").grace_deadline
        assert bob_deadline is not None
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert time.time() < bob_deadline - 1.0, "the machine is too slow for this window"

    # Process 2: a new agent on the same room and store.
    room = await loopback_server.connect("agent-2", ROOM, kind="agent")
    manager = LifecycleManager(LifecycleConfig(grace_period=GRACE, store=store))
    cleaned: list[tuple[str, str]] = []
    manager.add_cleanup(lambda s: cleaned.append((s.key, s.sid)))
    removed: asyncio.Future[tuple[Session, float]] = asyncio.get_running_loop().create_future()

    @manager.on("removed")
    def on_removed(session: Session) -> None:
        if session.key == "bob" and not removed.done():
            removed.set_result((session, time.time()))

    manager.attach(room)
    try:
        session = await manager.wait_for("alice", State.ACTIVE, WAIT)
        assert session.sid == alice.local_participant.sid
        assert session.user_id == "u-alice" and session.data == {"joined": "alice"}
        bob_session = manager.get("bob")
        assert bob_session is not None and bob_session.state is State.GRACE
        assert bob_session.user_id == "u-bob" and bob_session.cleanups == 1

        gone, at = await asyncio.wait_for(removed, WAIT)
        assert gone is bob_session
        assert at == pytest.approx(bob_deadline, abs=0.5)  # the original deadline
        assert [line for line in seen if line.startswith("cleanup")] == [f"cleanup bob {bob_sid}"]
        assert cleaned == []  # bob's one cleanup ran in process 1, never again here
        assert manager.stats["sessions_restored"] == 2
    finally:
        await manager.aclose()
        await room.disconnect()
        await store.aclose()
    assert cleaned == [("alice", alice.local_participant.sid)]  # at shutdown, once
