"""Crash recovery with real workers, a real redis-server and a user in Chromium (issue 22).

``recovery_agent.py`` runs as real livekit-agents workers (``python
recovery_agent.py start``, the ``agent_worker`` fixture) with a ``RedisStore``
on the test's own redis-server. A worker (or only its job process) is
SIGKILLed mid-conversation; watchdogs (the ``livekit-lifecycle watchdog``
command and the Python API, with their default dispatcher: livekit-api's
``AgentDispatchService`` on the LoopbackServer) dispatch the room again; a job
restores the sessions and the conversation. What the jobs did is read from the
workers' logs and from the cleanup file every job appends to; what was
dispatched, from the server's dispatches. Every wait is on a state, with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
from livekit import rtc

from livekit_lifecycle.stores import RedisStore, SessionRecord
from livekit_lifecycle.watchdog import Watchdog, resume_info
from livekit_loopback import LoopbackServer
from livekit_loopback.agent_worker import AgentWorker
from livekit_loopback.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

AGENT = Path(__file__).resolve().parent / "recovery_agent.py"
REPOSITORY = Path(__file__).resolve().parents[2]
ROOM = "recovery-room"
SLOW = 30.0
"""A cold worker, a job process and WebRTC on a loaded two-core machine: generous, never
waited out."""
LEASE_TTL = 2.0
"""The agents' lease: shorter than the default (5 s) to keep the tests short."""
GRACE = 15.0
"""Long enough for bob's window to outlast the crash and the recovery on a loaded machine."""
INTERVAL = 0.5
"""The watchdogs' poll interval."""

StartWorker = Callable[..., Awaitable[AgentWorker]]
Record = dict[str, Any]


def matches(name: str, **fields: Any) -> Callable[[Record], bool]:
    return lambda r: r.get("message") == name and all(r.get(k) == v for k, v in fields.items())


def job_lines(worker: AgentWorker, name: str, **fields: Any) -> list[Record]:
    return [r for r in worker.lines() if matches(name, **fields)(r)]


def errors(worker: AgentWorker) -> list[Record]:
    return [r for r in worker.lines() if r.get("level") in ("ERROR", "CRITICAL")]


def logged_at(record: Record) -> float:
    """Wall-clock seconds of a worker's JSON log line."""
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


class Recovery:
    """One test's fleet: workers of ``recovery_agent.py``, its store, its watchdogs."""

    def __init__(
        self,
        server: LoopbackServer,
        redis: RedisServer,
        start_worker: StartWorker,
        directory: Path,
    ) -> None:
        self.server = server
        self.redis = redis
        self._start_worker = start_worker
        self.namespace = f"t{uuid.uuid4().hex[:8]}"
        self.cleanup_file = directory / "cleanups.jsonl"
        self.directory = directory
        self.stores: list[RedisStore] = []
        self.watchdogs: list[Watchdog] = []
        self.commands: list[subprocess.Popen[bytes]] = []

    async def worker(self, **env: str) -> AgentWorker:
        worker = await self._start_worker(
            AGENT,
            self.server,
            env={
                **env,
                "RECOVERY_REDIS_URL": self.redis.url,
                "RECOVERY_NAMESPACE": self.namespace,
                "RECOVERY_CLEANUPS": str(self.cleanup_file),
                "RECOVERY_GRACE": str(GRACE),
                "RECOVERY_LEASE_TTL": str(LEASE_TTL),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPOSITORY), os.environ.get("PYTHONPATH")) if p
                ),
            },
            drain_timeout=1,
        )
        await worker.wait_registered(timeout=SLOW)
        return worker

    def store(self, **options: Any) -> RedisStore:
        store = RedisStore.from_url(self.redis.url, namespace=self.namespace, **options)
        self.stores.append(store)
        return store

    def watchdog(self, name: str, **store_options: Any) -> Watchdog:
        """The Python API in this process, with its default dispatcher (livekit-api)."""
        watchdog = Watchdog(
            self.store(**store_options),
            url=self.server.url.replace("ws://", "http://"),
            api_key=self.server.api_key,
            api_secret=self.server.api_secret,
            interval=INTERVAL,
            name=name,
        )
        self.watchdogs.append(watchdog)
        return watchdog

    def watchdog_command(self) -> subprocess.Popen[bytes]:
        """``livekit-lifecycle watchdog`` as its own process, configured as a user would."""
        log = self.command_log(len(self.commands)).open("wb")
        command = subprocess.Popen(
            [
                *(sys.executable, "-m", "livekit_lifecycle", "watchdog"),
                *("--store", self.redis.url, "--namespace", self.namespace),
                *("--interval", str(INTERVAL)),
            ],
            env={
                **os.environ,
                "LIVEKIT_URL": self.server.url,
                "LIVEKIT_API_KEY": self.server.api_key,
                "LIVEKIT_API_SECRET": self.server.api_secret,
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.commands.append(command)
        return command

    def command_log(self, index: int) -> Path:
        """Where the ``index``-th watchdog command writes its output (stdout and stderr)."""
        return self.directory / f"watchdog-{index + 1}.log"

    def command_dispatches(self, index: int) -> list[str]:
        """The dispatch lines the ``index``-th watchdog command printed."""
        text = self.command_log(index).read_text(errors="replace")
        return [
            line
            for line in text.splitlines()
            if line.startswith("livekit-lifecycle watchdog: dispatched ")
        ]

    def resume_dispatches(self) -> list[Any]:
        """The room's dispatches a watchdog made (their metadata says they resume)."""
        return [d for d in self.server.dispatches(ROOM) if resume_info(d.metadata) is not None]

    def cleanups(self) -> list[Record]:
        """Every cleanup any job of the test ran, in order (the agent's shared file)."""
        try:
            text = self.cleanup_file.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    async def stored(
        self, done: Callable[[dict[str, SessionRecord]], bool], timeout: float = SLOW
    ) -> dict[str, SessionRecord]:
        """The room's records in Redis once ``done`` holds for them."""
        reader = self.stores[0] if self.stores else self.store()
        deadline = time.monotonic() + timeout
        while True:
            records = {r.key: r for r in (await reader.read_room(ROOM)).records}
            if done(records):
                return records
            assert time.monotonic() < deadline, f"the store never got there: {records}"
            await asyncio.sleep(0.05)

    async def until(self, what: str, predicate: Callable[[], bool], timeout: float = SLOW) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        for watchdog in self.watchdogs:
            await watchdog.aclose()
        for store in self.stores:
            await store.aclose()
        for command in self.commands:
            if command.poll() is None:
                command.kill()
            command.wait(10)


@pytest.fixture
async def recovery(
    loopback_server: LoopbackServer,
    redis_server: RedisServer,
    agent_worker: StartWorker,
    tmp_path: Path,
) -> AsyncIterator[Recovery]:
    fleet = Recovery(loopback_server, redis_server, agent_worker, tmp_path)
    try:
        yield fleet
    finally:
        await fleet.aclose()


def user_said(*texts: str) -> Callable[[dict[str, SessionRecord]], bool]:
    """Alice's stored conversation holds ``texts`` (and the answer to the last)."""

    def done(records: dict[str, SessionRecord]) -> bool:
        record = records.get("alice")
        conversation = None if record is None else record.conversation
        if conversation is None:
            return False
        messages = [i for i in conversation["items"] if i.get("type") == "message"]
        said = ["".join(i["content"]) for i in messages if i["role"] == "user"]
        return said == list(texts) and messages[-1]["role"] == "assistant"

    return done


async def chat(worker: AgentWorker, send: Callable[[str], Awaitable[Any]], text: str) -> str:
    """``text`` on ``lk.chat`` from the user; the agent's answer, read from its job's log."""
    before = len(job_lines(worker, "recovery.chat", role="assistant"))
    await send(text)
    await worker.wait_for_line(
        lambda _: len(job_lines(worker, "recovery.chat", role="assistant")) > before,
        timeout=SLOW,
    )
    return str(job_lines(worker, "recovery.chat", role="assistant")[before]["text"])


def sdk_chat(room: rtc.Room) -> Callable[[str], Awaitable[Any]]:
    async def send(text: str) -> Any:
        return await room.local_participant.send_text(text, topic="lk.chat")

    return send


async def leave(room: rtc.Room) -> None:
    """The SDK user leaves (bounded: a hung disconnect fails the test, never hangs it)."""
    await asyncio.wait_for(room.disconnect(), SLOW)


async def reached(worker: AgentWorker, key: str, state: str, **fields: Any) -> Record:
    return await worker.wait_for_line(
        matches("session.transition", key=key, to_state=state, **fields), timeout=SLOW
    )


# --------------------------------------------------------------------------- the worker dies


@pytest.mark.browser
async def test_a_killed_workers_room_goes_to_another_worker_with_sessions_and_conversation(
    recovery: Recovery, browser_client: Any
) -> None:
    """Worker A is SIGKILLed while alice (Chromium) talks and bob is in his window: two
    watchdogs (the command and the API) dispatch the room once, worker B's job restores
    alice's session and conversation and ends bob's window at its original deadline, and
    every connection is cleaned once across A and B."""
    server = recovery.server
    a = await recovery.worker()
    alice = await browser_client.open(server.url, server.token("alice", ROOM), name="alice")
    alice_sid = (await alice.state())["sid"]
    first = await reached(a, "alice", "active", sid=alice_sid)
    await a.wait_for_line(matches("agents.linked", key="alice"), timeout=SLOW)
    b = await recovery.worker()  # registers while A runs the room: it gets no job

    bob = await server.connect("bob", ROOM)
    bob_sid = bob.local_participant.sid
    await reached(a, "bob", "active")
    await leave(bob)
    await reached(a, "bob", "grace")

    async def browser_says(text: str) -> Any:
        return await alice.page.evaluate(
            "async (t) => { await lk.room.localParticipant.sendText(t, {topic: 'lk.chat'}); }",
            text,
        )

    assert await chat(a, browser_says, "my name is Zed") == "you said: my name is Zed"
    assert await chat(a, browser_says, "I like cats") == "you said: my name is Zed | I like cats"
    # Everything is in Redis before the crash: the write-behind window is not what this tests.
    records = await recovery.stored(
        lambda r: (
            user_said("my name is Zed", "I like cats")(r)
            and r["alice"].data.get("turns") == 2
            and r.get("bob") is not None
            and r["bob"].state == "grace"
        )
    )
    bob_deadline = records["bob"].grace_deadline
    assert bob_deadline is not None
    assert [c["sid"] for c in recovery.cleanups()] == [bob_sid]  # bob's, by A
    assert job_lines(b, "recovery.job_started") == []

    command = recovery.watchdog_command()
    async with recovery.watchdog("wd-api") as in_process:
        await a.kill()  # SIGKILL: no shutdown, no cleanup, the lease is left to expire
        # B's job started its AgentSession, after giving it the conversation back.
        agent_session = await b.wait_for_line(matches("recovery.agent_session"), timeout=SLOW)
        [restored] = job_lines(b, "agents.conversation_restored")
        [started] = job_lines(b, "recovery.job_started")
        assert started["resume"] is True
        # Alice is still in the room: B's job has her session as A left it.
        [alice_back] = job_lines(b, "session.restored", key="alice")
        assert alice_back["sid"] == alice_sid and alice_back["stored_state"] == "active"
        assert alice_back["user_id"] == "id-alice"
        assert restored["key"] == "alice"
        assert agent_session["linked"] == "alice"
        assert agent_session["history"] == [
            "my name is Zed",
            "you said: my name is Zed",
            "I like cats",
            "you said: my name is Zed | I like cats",
        ]
        # Her data as A's job left it (B's `created` listener keeps what is there).
        assert agent_session["data"] == {"first_job_pid": first["pid"], "turns": 2}
        # The next answer knows what was said before the crash.
        assert await chat(b, browser_says, "what is my name?") == (
            "you said: my name is Zed | I like cats | what is my name?"
        )
        [bob_back] = job_lines(b, "session.restored", key="bob")
        assert bob_back["stored_state"] == "grace"
        assert abs(logged_at(bob_back) + bob_back["grace_remaining"] - bob_deadline) < 0.5

        # Bob does not come back: his window ends at its original deadline, in B.
        removed = await reached(b, "bob", "removed")
        assert bob_deadline - 0.05 <= logged_at(removed) < bob_deadline + 1.5

        # Dispatched once, by one of the two watchdogs.
        assert len(recovery.resume_dispatches()) == 1
    assert command.poll() is None, "the watchdog command exited"
    command.send_signal(signal.SIGINT)
    assert command.wait(SLOW) == 0
    [dispatch] = recovery.resume_dispatches()
    info = resume_info(dispatch.metadata)
    assert info is not None and info["sessions"] == 2
    # The command prints one line per dispatch it made (none when the other one won).
    lines = recovery.command_dispatches(0)
    assert len(lines) + in_process.stats["dispatched"] == 1
    if lines:
        assert lines == [
            f"livekit-lifecycle watchdog: dispatched room={ROOM}"
            f" dead_lease={info['dead_owner']} sessions=2 dispatch_id={dispatch.id}"
        ]

    # Alice leaves: B cleans her connection, which A never cleaned.
    await alice.close()
    await recovery.until(
        "alice's cleanup", lambda: any(c["sid"] == alice_sid for c in recovery.cleanups())
    )
    cleaned = recovery.cleanups()
    assert sorted(c["sid"] for c in cleaned) == sorted([bob_sid, alice_sid])
    by_sid = {c["sid"]: c for c in cleaned}
    assert by_sid[bob_sid]["pid"] == first["pid"] and by_sid[alice_sid]["pid"] != first["pid"]
    assert not any(c["retry"] for c in cleaned)
    assert errors(b) == [], b.tail()


# --------------------------------------------------------------------------- only the job dies


async def test_a_job_process_killed_alone_recovers_the_same_way_and_bob_comes_back(
    recovery: Recovery,
) -> None:
    """The OOM killer takes only the job process: its worker serves on, reports the job
    failed, and gets the room again from the watchdog it runs itself (the in-worker recipe);
    bob, in his window during the crash, comes back to his session in the new job."""
    server = recovery.server
    a = await recovery.worker(RECOVERY_WATCHDOG="1")
    alice = await server.connect("alice", ROOM)
    first = await reached(a, "alice", "active")
    await a.wait_for_line(matches("agents.linked", key="alice"), timeout=SLOW)
    bob = await server.connect("bob", ROOM)
    bob_sid = bob.local_participant.sid
    await reached(a, "bob", "active")
    assert await chat(a, sdk_chat(alice), "remember 42") == "you said: remember 42"
    await leave(bob)
    await reached(a, "bob", "grace")
    await recovery.stored(
        lambda r: (
            user_said("remember 42")(r) and r.get("bob") is not None and r["bob"].state == "grace"
        )
    )

    old_pid = int(first["pid"])
    assert old_pid != a.pid
    os.kill(old_pid, signal.SIGKILL)
    # The new job process's AgentSession started (it restored the conversation first).
    started = await a.wait_for_line(
        lambda r: matches("recovery.agent_session", linked="alice")(r) and r["pid"] != old_pid,
        timeout=SLOW,
    )
    new_pid = started["pid"]
    assert started["history"] == ["remember 42", "you said: remember 42"]
    assert a.returncode is None  # the worker served on
    assert await chat(a, sdk_chat(alice), "what number?") == (
        "you said: remember 42 | what number?"
    )
    bob = await server.connect("bob", ROOM)  # inside his window, on a new connection
    back = await a.wait_for_line(
        lambda r: (
            matches("session.transition", key="bob", to_state="reconnected")(r)
            and r["pid"] == new_pid
        ),
        timeout=SLOW,
    )
    assert back["sid"] == bob.local_participant.sid != bob_sid
    # The worker's own watchdog dispatched it (its log line, from the worker process).
    [dispatched] = job_lines(a, "watchdog.dispatched")
    assert dispatched["pid"] == a.pid and dispatched["sessions"] == 2
    assert len(recovery.resume_dispatches()) == 1
    [bob_restored] = [r for r in job_lines(a, "session.restored", key="bob") if r["pid"] == new_pid]
    assert bob_restored["user_id"] == "id-bob" and bob_restored["stored_state"] == "grace"

    # Both leave: each connection of the test is cleaned once, across both job processes.
    new_bob_sid, alice_sid = bob.local_participant.sid, alice.local_participant.sid
    await leave(alice)
    await leave(bob)
    await recovery.until("three cleanups", lambda: len(recovery.cleanups()) >= 3)
    cleaned = recovery.cleanups()
    assert sorted(c["sid"] for c in cleaned) == sorted([bob_sid, alice_sid, new_bob_sid])
    assert [c["pid"] for c in cleaned] == [old_pid, new_pid, new_pid]
    assert {c["key"]: c["user_id"] for c in cleaned} == {"alice": "id-alice", "bob": "id-bob"}
    assert [e for e in errors(a) if e["pid"] == new_pid] == [], a.tail()


# --------------------------------------------------------------------------- Redis goes away


async def test_redis_frozen_while_the_watchdogs_run_dispatches_nothing_then_once(
    recovery: Recovery,
) -> None:
    """Worker A dies while Redis answers nobody: no watchdog dispatches anything (no claim,
    no dispatch); once Redis answers, the room is dispatched once and B restores it."""
    server = recovery.server
    a = await recovery.worker()
    alice = await server.connect("alice", ROOM)
    await reached(a, "alice", "active")
    await a.wait_for_line(matches("agents.linked", key="alice"), timeout=SLOW)
    b = await recovery.worker()
    assert await chat(a, sdk_chat(alice), "hello") == "you said: hello"
    await recovery.stored(user_said("hello"))

    one = recovery.watchdog("wd-one", timeout=0.3)
    two = recovery.watchdog("wd-two", timeout=0.3)
    pid = recovery.redis.pid
    assert pid is not None
    async with one, two:
        os.kill(pid, signal.SIGSTOP)  # every command times out
        try:
            await a.kill()
            killed = time.monotonic()
            # Both watchdogs fail polls past the time A's lease expires.
            errors_then = one.stats["store_errors"], two.stats["store_errors"]
            await recovery.until(
                "failed polls past the lease's expiry",
                lambda: (
                    time.monotonic() - killed > LEASE_TTL + INTERVAL
                    and one.stats["store_errors"] > errors_then[0] + 1
                    and two.stats["store_errors"] > errors_then[1] + 1
                ),
            )
            assert recovery.resume_dispatches() == []
            assert one.stats["dispatched"] == two.stats["dispatched"] == 0
        finally:
            os.kill(pid, signal.SIGCONT)
        await b.wait_for_line(matches("recovery.agent_session", linked="alice"), timeout=SLOW)
        assert await chat(b, sdk_chat(alice), "again") == "you said: hello | again"
        assert one.stats["dispatched"] + two.stats["dispatched"] == 1
    assert len(recovery.resume_dispatches()) == 1
    assert errors(b) == [], b.tail()


# --------------------------------------------------------------------------- nobody left


async def test_a_room_left_while_no_job_was_alive_gets_its_cleanup_once_then_the_job_ends(
    recovery: Recovery,
) -> None:
    """Alice leaves while her job is dead: the room is dispatched anyway, the new job runs
    the cleanup her connection was owed (once), her window runs out, and the job ends."""
    server = recovery.server
    a = await recovery.worker(RECOVERY_GRACE="2")
    alice = await server.connect("alice", ROOM)
    alice_sid = alice.local_participant.sid
    await reached(a, "alice", "active")
    await a.wait_for_line(matches("recovery.agent_session", linked="alice"), timeout=SLOW)
    b = await recovery.worker(RECOVERY_GRACE="2")
    await recovery.stored(lambda r: r.get("alice") is not None and r["alice"].state == "active")
    async with recovery.watchdog("wd-api"):
        await a.kill()
        await leave(alice)  # nobody is in the room; the dead job still owes her cleanup
        cleaned = await b.wait_for_line(matches("recovery.cleanup", key="alice"), timeout=SLOW)
        assert cleaned["sid"] == alice_sid
        await b.wait_for_line(matches("agents.job_ending", key="alice"), timeout=SLOW)
        await b.wait_for_line(matches("shutdown.done"), timeout=SLOW)
    assert [c["sid"] for c in recovery.cleanups()] == [alice_sid]
    assert len(recovery.resume_dispatches()) == 1
    assert b.returncode is None  # the worker serves on; only the job ended
    assert errors(b) == [], b.tail()
