"""AgentWorker: a user's agent file as a real livekit-agents worker process (``start`` mode).

These tests run real worker processes (with their real job-process pool) and read
what they did from their own JSON log, as a user's test would.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
from livekit_loopback.agent_worker import AgentWorker, WorkerExited
from livekit_loopback.support import eventually

TINY_AGENT = """
from livekit.agents import AgentServer, JobContext, cli

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()


if __name__ == "__main__":
    cli.run_app(server)
"""
START = 30.0  # a cold worker imports livekit.agents and warms its pool: ~3 s here


@pytest.fixture
def agent_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_agent.py"
    path.write_text(TINY_AGENT)
    return path


def worker_for(agent_file: Path, tmp_path: Path, **options: object) -> AgentWorker:
    # Nothing listens there: these tests are about the process, not the server.
    return AgentWorker(
        agent_file,
        url="ws://127.0.0.1:9",
        api_key="test",
        api_secret="a-secret-long-enough-for-hs256-32b",
        log_path=tmp_path / "worker.log",
        **options,  # type: ignore[arg-type]
    )


def message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record.get("message") == text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_the_worker_starts_with_test_options_and_drains_on_a_signal(
    agent_file: Path, tmp_path: Path, sig: int
) -> None:
    async with worker_for(agent_file, tmp_path, idle_processes=1, drain_timeout=7) as worker:
        listening = await worker.wait_for_line(
            lambda r: str(r.get("message", "")).startswith("HTTP server listening on"),
            timeout=START,
        )
        port = int(re.sub(r"\D", "", str(listening["message"])))
        assert port not in (0, 8081)  # port 0 asked, an ephemeral one bound
        await worker.wait_for_line(message("process initialized"), timeout=START)
        assert await worker.stop(sig, timeout=START) == 0
        messages = [r.get("message") for r in worker.lines()]
        assert "draining worker" in messages and "shutting down worker" in messages
        [draining] = [r for r in worker.lines() if r.get("message") == "draining worker"]
        assert draining["timeout"] == 7
        assert messages.count("initializing process") == 1  # the small idle pool
    assert worker.log_path.exists()  # the log outlives the worker


async def test_sigkill_ends_the_worker_with_no_shutdown(agent_file: Path, tmp_path: Path) -> None:
    async with worker_for(agent_file, tmp_path) as worker:
        await worker.wait_for_line(message("process initialized"), timeout=START)
        group = worker.pid
        assert group is not None and len(living_in_group(group)) >= 2  # forkserver, idle job
        assert await worker.stop(signal.SIGKILL) == -signal.SIGKILL
        assert "draining worker" not in worker.text()
    # The worker's children outlive a SIGKILL of it; the context's end takes them with it.
    assert await eventually(lambda: not living_in_group(group), timeout=10.0)


def living_in_group(group: int) -> list[int]:
    """Processes of process group ``group`` that are not zombies (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


async def test_waiting_for_a_registration_that_never_comes_says_why(
    agent_file: Path, tmp_path: Path
) -> None:
    async with worker_for(agent_file, tmp_path) as worker:
        # The worker's first failed attempt, waited for (a cold start takes 3 s here, more
        # on a loaded machine): the timeout below is then about what it says, not the start.
        await worker.wait_for_line(
            lambda r: "failed to connect to livekit" in str(r.get("message", "")), timeout=START
        )
        with pytest.raises(TimeoutError) as raised:
            await worker.wait_registered(timeout=1.0)
        assert "failed to connect to livekit" in str(raised.value)  # the log's tail
        assert str(worker.log_path) in str(raised.value)


async def test_a_worker_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken_agent.py"
    broken.write_text("raise RuntimeError('my agent does not import')\n")
    async with worker_for(broken, tmp_path) as worker:
        with pytest.raises(WorkerExited, match="my agent does not import"):
            await worker.wait_registered(timeout=START)
        assert worker.returncode not in (None, 0)


def test_bad_arguments_are_clear_errors(agent_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no agent file"):
        worker_for(tmp_path / "missing.py", tmp_path)
    with pytest.raises(ValueError, match="idle_processes"):
        worker_for(agent_file, tmp_path, idle_processes=-1)
    with pytest.raises(ValueError, match="drain_timeout"):
        worker_for(agent_file, tmp_path, drain_timeout=-1)


async def test_the_plugin_fixture_starts_workers_and_kills_them_at_teardown(
    agent_file: Path, agent_worker: Callable[..., Awaitable[AgentWorker]], tmp_path: Path
) -> None:
    worker = await agent_worker(
        agent_file, url="ws://127.0.0.1:9", api_key="test", api_secret="s" * 32
    )
    await worker.wait_for_line(message("process initialized"), timeout=START)
    assert worker.log_path == tmp_path / "worker-1.log" and worker.returncode is None
    with pytest.raises(TypeError, match="needs a server"):
        await agent_worker(agent_file)
