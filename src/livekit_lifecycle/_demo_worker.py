"""``livekit-lifecycle demo --worker``: the scripted users against a real livekit-agents worker.

The embedded loopback server gets agent dispatch; ``examples/voice_agent.py`` (or
the agent file given) runs as a real worker (``python voice_agent.py start``,
models-free: ``VOICE_AGENT_MODELS=none``, no cloud credentials), and its job
process, dispatched when the first user's join creates the room, runs the
manager. The scripted users are real SDK clients. What happens inside the job
is read from the worker's log (the job's structlog events as JSON lines) and
printed as a timeline; then Ctrl+C (SIGINT) stops the worker and the job's
shutdown is checked. Slower than the default demo (a worker and a job process
start: a few seconds).
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ._demo_common import Timeline

__all__ = ["WorkerDemoUnavailable", "run_worker_demo"]

ROOM = "demo-worker-room"
_WAIT = 30.0


class WorkerDemoUnavailable(RuntimeError):
    """The worker demo cannot run here (no agent file, no livekit-agents, no usable server)."""


async def run_worker_demo(agent_file: Path, out: TextIO | None = None) -> int:
    """Play the users against a real worker running ``agent_file``; 0 when every check passed.

    Raises:
        WorkerDemoUnavailable: before anything is shown, when it cannot run here.
    """
    if not agent_file.is_file():  # noqa: ASYNC240 - once, before anything runs
        raise WorkerDemoUnavailable(
            f"no agent file at {agent_file} (run it from a checkout, or pass --worker PATH)"
        )
    try:
        import livekit.agents  # noqa: F401

        from livekit_loopback import LoopbackServer, LoopbackUnavailable
        from livekit_loopback.agent_worker import AgentWorker
    except ImportError as exc:
        raise WorkerDemoUnavailable(str(exc)) from None
    server = LoopbackServer(leave_timeout=1.0)
    try:
        await server.start()
    except LoopbackUnavailable as exc:
        raise WorkerDemoUnavailable(str(exc)) from None
    timeline = Timeline(out)
    with tempfile.TemporaryDirectory(prefix="livekit-lifecycle-demo-") as tmp:
        worker = AgentWorker(
            agent_file,
            url=server.url,
            api_key=server.api_key,
            api_secret=server.api_secret,
            log_path=Path(tmp) / "worker.log",
            drain_timeout=1,
            env={"VOICE_AGENT_MODELS": "none"},
        )
        try:
            async with worker:
                timeline.title(
                    f"livekit-lifecycle demo --worker: {agent_file} as a real livekit-agents"
                    f" worker (pid {worker.pid}) on {server.url}"
                )
                follower = _LogFollower(worker, timeline)
                follow = asyncio.get_running_loop().create_task(follower.run())
                try:
                    await _Script(server, worker, timeline).play()
                finally:
                    await asyncio.sleep(0.2)  # the last lines, then stop following
                    follow.cancel()
        except (TimeoutError, RuntimeError) as exc:
            timeline.check(f"the worker did what was expected ({exc})", False)
        finally:
            await server.stop()
    return timeline.verdict()


class _LogFollower:
    """Prints the job's lifecycle events from the worker's log as they appear."""

    _SHOWN: frozenset[str] = frozenset(
        {
            "session.transition",
            "session.user_id_set",
            "agents.linked",
            "agents.relinked",
            "agents.job_shutdown",
            "agents.job_ending",
            "shutdown.done",
            "draining worker",
            "registered worker",
        }
    )

    def __init__(self, worker: Any, timeline: Timeline) -> None:
        self.worker = worker
        self.timeline = timeline
        self.seen = 0

    async def run(self) -> None:
        while True:
            lines = list(self.worker.lines())
            for record in lines[self.seen :]:
                self._show(record)
            self.seen = len(lines)
            await asyncio.sleep(0.05)  # following a file: there is nothing to wait on

    def _show(self, record: dict[str, Any]) -> None:
        name = record.get("message")
        if name not in self._SHOWN:
            return
        if name == "session.transition":
            self.timeline.line(
                f"job  {str(record.get('key'))[:8]:<8} {record.get('from_state'):>13} ->"
                f" {record.get('to_state'):<13} {record.get('trigger')}"
            )
            return
        fields = {k: record[k] for k in ("key", "user_id", "identity", "duration") if k in record}
        where = "job " if name not in ("draining worker", "registered worker") else "worker"
        self.timeline.line(f"{where} {name} {fields or ''}")


class _Script:
    def __init__(self, server: Any, worker: Any, timeline: Timeline) -> None:
        self.server = server
        self.worker = worker
        self.timeline = timeline
        self.first_tab: Any = None

    def lines(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.worker.lines()
            if r.get("message") == name and all(r.get(k) == v for k, v in fields.items())
        ]

    async def line(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        record: dict[str, Any] = await self.worker.wait_for_line(predicate, timeout=_WAIT)
        return record

    async def state(self, key: str, state: str) -> dict[str, Any]:
        return await self.line(
            lambda r: (
                r.get("message") == "session.transition"
                and r.get("key") == key
                and r.get("to_state") == state
            )
        )

    async def play(self) -> None:
        timeline, server = self.timeline, self.server
        timeline.heading("A worker registers; the first user's join creates the room and a job")
        await self.worker.wait_registered(timeout=_WAIT)
        user = str(uuid.uuid4())
        self.first_tab = await server.connect(f"user-{user}-tab-1", ROOM)
        await self.state(user, "active")
        await self.line(
            lambda r: r.get("message") == "session.user_id_set" and r.get("key") == user
        )
        timeline.check(
            "the first user was identified by the example's `created` listener",
            bool(self.lines("session.user_id_set", key=user, user_id=user)),
        )

        timeline.heading("Refresh: the page leaves, a new page joins with a new identity")
        await self.first_tab.disconnect()
        await self.state(user, "grace")
        await server.connect(f"user-{user}-tab-2", ROOM)
        await self.state(user, "reconnected")
        await self.line(lambda r: r.get("message") == "agents.relinked" and r.get("key") == user)
        timeline.check("the same session, re-linked to the new page", True)
        timeline.check(
            "the AgentSession stayed open", not self.lines("agents.session_closing", key=user)
        )

        timeline.heading("A second user joins; then Ctrl+C stops the worker")
        other = str(uuid.uuid4())
        await server.connect(f"user-{other}-tab-1", ROOM)
        await self.state(other, "active")
        code = await self.worker.stop(signal.SIGINT, timeout=_WAIT)
        done = await self.line(lambda r: r.get("message") == "shutdown.done")
        timeline.check("the worker exited cleanly after the drain", code == 0)
        cleaned = [str(r.get("key")) for r in self.lines("session.transition", to_state="cleaned")]
        timeline.check(
            "every user's connections cleaned exactly once (2 for the refreshed user, 1 other)",
            sorted(cleaned) == sorted([user, user, other]),
        )
        timeline.check(
            f"the job's shutdown took {done.get('duration')}s, inside the 10 s budget",
            float(done.get("duration", 99)) < 8.0,
        )
        errors = [r for r in self.worker.lines() if r.get("level") in ("ERROR", "CRITICAL")]
        timeline.check("nothing logged at error level", not errors)
