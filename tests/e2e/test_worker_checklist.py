"""The seed's checklist against a real livekit-agents worker and real job processes.

``tests/e2e/checklist_agent.py`` runs as ``python checklist_agent.py start`` (the
``agent_worker`` fixture), registers with the LoopbackServer, and gets a job when
the first user's join creates the room (automatic dispatch). Users are real SDK
clients, and livekit-client in headless Chromium for the browser tests. Everything
about the job is read back from the worker's log: the job process's log records
(the library's structlog events, the agent's own lines) arrive there as JSON lines
through livekit-agents' log forwarding. Nothing is mocked and nothing in the job
is reached from the test but through that log.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
from livekit_loopback import LoopbackServer
from livekit_loopback.agent_worker import AgentWorker

pytestmark = pytest.mark.e2e

AGENT = Path(__file__).resolve().parent / "checklist_agent.py"
ROOM = "worker-room"
SLOW = 30.0
"""A cold worker, a job process and WebRTC on a loaded two-core machine: generous, never
waited out."""
BUDGET = 10.0
"""livekit-agents' default shutdown_process_timeout, which the agent keeps."""

StartWorker = Callable[..., Awaitable[AgentWorker]]


def matches(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("message") == name and all(r.get(k) == v for k, v in fields.items())


def job_lines(worker: AgentWorker, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [r for r in worker.lines() if matches(name, **fields)(r)]


async def reached(worker: AgentWorker, key: str, state: str) -> dict[str, Any]:
    """The job's log line of ``key``'s session entering ``state``."""
    return await worker.wait_for_line(
        matches("session.transition", key=key, to_state=state), timeout=SLOW
    )


def errors(worker: AgentWorker) -> list[dict[str, Any]]:
    return [r for r in worker.lines() if r.get("level") in ("ERROR", "CRITICAL")]


async def running(agent_worker: StartWorker, server: LoopbackServer, **env: str) -> AgentWorker:
    worker = await agent_worker(AGENT, server, env=env, drain_timeout=1)
    await worker.wait_registered(timeout=SLOW)
    return worker


async def test_the_first_user_gets_a_job_and_is_identified(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(agent_worker, loopback_server)
    await loopback_server.connect("alice", ROOM)  # creates the room: the job is dispatched
    await reached(worker, "alice", "active")
    # The `created` listener registered after for_job saw the user who was already there.
    await worker.wait_for_line(
        matches("session.user_id_set", key="alice", user_id="id-alice"), timeout=SLOW
    )
    await worker.wait_for_line(matches("agents.linked", key="alice"), timeout=SLOW)
    assert errors(worker) == []


async def test_a_refresh_keeps_the_session_and_the_agent_session(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(agent_worker, loopback_server, CHECKLIST_GRACE="15")
    alice = await loopback_server.connect("alice", ROOM)
    first = await reached(worker, "alice", "active")
    await alice.disconnect()
    await reached(worker, "alice", "grace")
    await loopback_server.connect("alice", ROOM)
    await reached(worker, "alice", "reconnected")
    await worker.wait_for_line(  # reconnected -> connecting -> active on the new connection
        lambda r: (
            matches("session.transition", key="alice", to_state="active")(r)
            and r.get("sid") != first["sid"]
        ),
        timeout=SLOW,
    )
    assert len(job_lines(worker, "checklist.cleanup", key="alice")) == 1
    assert len(job_lines(worker, "checklist.agent_session")) == 1  # one job, one AgentSession
    assert job_lines(worker, "agents.session_closing") == []
    assert errors(worker) == []


async def test_five_quick_reloads_clean_once_per_connection(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(agent_worker, loopback_server, CHECKLIST_GRACE="15")
    # The job joins the room its first user created: reload once it is there.
    page = await loopback_server.connect("alice", ROOM)
    await reached(worker, "alice", "active")
    for _ in range(5):
        await page.disconnect()
        page = await loopback_server.connect("alice", ROOM)
    await worker.wait_for_line(
        lambda r: len(job_lines(worker, "checklist.cleanup", key="alice")) >= 5, timeout=SLOW
    )
    await reached(worker, "alice", "reconnected")
    cleaned = job_lines(worker, "checklist.cleanup", key="alice")
    assert len(cleaned) == 5 and len({r["sid"] for r in cleaned}) == 5
    assert all(r["user_id"] == "id-alice" for r in cleaned)
    assert errors(worker) == []


async def test_a_reconnect_after_the_window_starts_afresh(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(
        agent_worker, loopback_server, CHECKLIST_GRACE="1", CHECKLIST_WHEN_EMPTY="keep"
    )
    bob = await loopback_server.connect("bob", ROOM)  # keeps the room busy meanwhile
    alice = await loopback_server.connect("alice", ROOM)
    await reached(worker, "alice", "active")
    await alice.disconnect()
    await reached(worker, "alice", "removed")
    await loopback_server.connect("alice", ROOM)
    await worker.wait_for_line(
        lambda r: len(job_lines(worker, "session.user_id_set", key="alice")) == 2, timeout=SLOW
    )
    assert job_lines(worker, "session.transition", key="alice", to_state="reconnected") == []
    assert bob.isconnected() and errors(worker) == []


async def test_the_last_user_gone_ends_the_job(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(agent_worker, loopback_server, CHECKLIST_GRACE="0.5")
    alice = await loopback_server.connect("alice", ROOM)
    await reached(worker, "alice", "active")
    await alice.disconnect()
    await worker.wait_for_line(matches("agents.job_ending", key="alice"), timeout=SLOW)
    await worker.wait_for_line(matches("shutdown.done"), timeout=SLOW)
    assert len(job_lines(worker, "checklist.resource_closed")) == 1
    assert errors(worker) == []


async def shutdown_checks(worker: AgentWorker, users: set[str]) -> None:
    """Every user cleaned exactly once, the resource closed once, inside the budget."""
    await worker.wait_for_line(matches("shutdown.done"), timeout=SLOW)
    cleaned = [r["key"] for r in job_lines(worker, "checklist.cleanup")]
    assert sorted(cleaned) == sorted(users)
    assert [r["closes"] for r in job_lines(worker, "checklist.resource_closed")] == [1]
    [done] = job_lines(worker, "shutdown.done")
    assert done["duration"] < BUDGET - 2.0
    assert errors(worker) == [], worker.tail()


async def test_ctrl_c_drains_then_the_job_shuts_down_cleaning_everyone_once(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(agent_worker, loopback_server)
    await loopback_server.connect("alice", ROOM)
    await loopback_server.connect("bob", ROOM)
    await reached(worker, "alice", "active")
    await reached(worker, "bob", "active")
    assert await worker.stop(signal.SIGINT, timeout=1 + BUDGET + SLOW) == 0
    await shutdown_checks(worker, {"alice", "bob"})
    assert job_lines(worker, "draining worker")


async def test_a_shutdown_that_could_overrun_is_reported_at_start_and_fitted_in_the_budget(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    """Cleanups allowed 30 s each, hanging at shutdown: the job said so when it started,
    and its shutdown still ends (resource closed) before the worker's 10 s kill."""
    worker = await running(
        agent_worker,
        loopback_server,
        CHECKLIST_CLEANUP_TIMEOUT="30",
        CHECKLIST_SLOW_CLEANUP="60",
    )
    await loopback_server.connect("alice", ROOM)
    await reached(worker, "alice", "active")
    [report] = job_lines(worker, "agents.shutdown_budget_exceeded")
    assert report["cleanup_timeout"] == 30.0 and report["available"] == 6.0
    assert await worker.stop(signal.SIGINT, timeout=1 + BUDGET + SLOW) == 0
    [done] = job_lines(worker, "shutdown.done")
    assert 5.0 < done["duration"] < BUDGET - 2.0  # the share (6 s), not the 30 s asked
    assert [r["closes"] for r in job_lines(worker, "checklist.resource_closed")] == [1]
    assert job_lines(worker, "checklist.cleanup") == []  # cut, as reported at start
    killed = [r for r in worker.lines() if "killing process" in str(r.get("message"))]
    assert killed == []


async def test_deleting_the_room_shuts_the_job_down_the_same_way(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(agent_worker, loopback_server)
    await loopback_server.connect("alice", ROOM)
    await loopback_server.connect("bob", ROOM)
    await reached(worker, "alice", "active")
    await reached(worker, "bob", "active")
    await loopback_server.close_room(ROOM)
    await shutdown_checks(worker, {"alice", "bob"})
    assert worker.returncode is None  # the worker serves on


async def test_a_second_ctrl_c_exits_at_once_and_loses_the_jobs_cleanup(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await agent_worker(AGENT, loopback_server)  # the default 1 h drain
    await worker.wait_registered(timeout=SLOW)
    await loopback_server.connect("alice", ROOM)
    await reached(worker, "alice", "active")
    worker.signal(signal.SIGINT)
    await worker.wait_for_line(matches("draining worker"), timeout=SLOW)
    assert await worker.stop(signal.SIGINT, timeout=SLOW) == 1  # os._exit(1)
    assert job_lines(worker, "checklist.cleanup") == []
    assert job_lines(worker, "checklist.resource_closed") == []
    assert job_lines(worker, "shutdown.done") == []


async def test_a_killed_job_process_loses_its_cleanup_and_the_worker_serves_on(
    loopback_server: LoopbackServer, agent_worker: StartWorker
) -> None:
    worker = await running(agent_worker, loopback_server)
    await loopback_server.connect("alice", ROOM)
    active = await reached(worker, "alice", "active")
    job_pid = int(active["pid"])
    assert job_pid != worker.pid
    os.kill(job_pid, signal.SIGKILL)
    await worker.wait_for_line(
        lambda r: "-9" in str(r.get("message", "")) or r.get("exitcode") == -9, timeout=SLOW
    )
    assert job_lines(worker, "checklist.cleanup") == []
    assert job_lines(worker, "shutdown.done") == []
    assert worker.returncode is None


# --------------------------------------------------------------------------- in a real browser


@pytest.mark.browser
async def test_a_browser_refresh_keeps_the_session_and_the_agent_session(
    loopback_server: LoopbackServer, agent_worker: StartWorker, browser_client: Any
) -> None:
    """livekit-client in Chromium: F5 leaves on pagehide and the page joins again."""
    worker = await running(agent_worker, loopback_server, CHECKLIST_GRACE="15")
    page = await browser_client.open(
        loopback_server.url, loopback_server.token("alice", ROOM), name="alice"
    )
    first_sid = (await page.state())["sid"]
    await worker.wait_for_line(
        matches("session.transition", key="alice", to_state="active", sid=first_sid),
        timeout=SLOW,
    )
    new_sid = await page.reload()
    assert new_sid is not None and new_sid != first_sid
    await worker.wait_for_line(
        matches("session.transition", key="alice", to_state="active", sid=new_sid),
        timeout=SLOW,
    )
    assert [r["sid"] for r in job_lines(worker, "checklist.cleanup", key="alice")] == [first_sid]
    assert job_lines(worker, "session.transition", key="alice", to_state="reconnected")
    assert len(job_lines(worker, "checklist.agent_session")) == 1
    assert job_lines(worker, "agents.session_closing") == []
    assert errors(worker) == []
    page.console.raise_for_errors("removeTrack")


@pytest.mark.browser
async def test_five_browser_reloads_clean_each_connection_once(
    loopback_server: LoopbackServer, agent_worker: StartWorker, browser_client: Any
) -> None:
    worker = await running(agent_worker, loopback_server, CHECKLIST_GRACE="15")
    page = await browser_client.open(
        loopback_server.url, loopback_server.token("alice", ROOM), name="alice"
    )
    await reached(worker, "alice", "active")
    for _ in range(5):
        # Each reload comes as soon as the page's script runs and interrupts it
        # wherever it got to: some connections join and leave, some never finish joining.
        await page.wait_for("true", SLOW)
        await page.page.reload(wait_until="commit")
    final_sid = await page.wait_ready(SLOW)

    def seen() -> set[str]:
        return {str(r["sid"]) for r in job_lines(worker, "session.transition", key="alice")}

    def cleaned() -> list[str]:
        return [str(r["sid"]) for r in job_lines(worker, "checklist.cleanup", key="alice")]

    # Every connection the job saw but the live one is cleaned (late leaves included).
    await worker.wait_for_line(
        lambda _: final_sid in seen() and set(cleaned()) == seen() - {final_sid}, timeout=SLOW
    )
    assert len(cleaned()) == len(set(cleaned())), f"a connection was cleaned twice: {cleaned()}"
    assert len(job_lines(worker, "checklist.agent_session")) == 1
    assert errors(worker) == []
    assert [e for e in page.console.entries if e.kind == "pageerror"] == []
