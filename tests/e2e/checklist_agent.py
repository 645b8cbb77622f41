"""The agent the real-worker checklist runs: ``python checklist_agent.py start``.

A livekit-agents worker as a user writes one: ``for_job`` with a model-less
AgentSession, a cleanup callback, and a resource to close at shutdown. What the
job does is read back from the worker's log: the library's own structlog events
(``session.transition``, ``shutdown.done``...) arrive there as JSON lines through
livekit-agents' log forwarding, plus the two lines below (``checklist.cleanup``,
``checklist.resource_closed``) that name what ran.

Configured by the environment, so one file serves every test:
``CHECKLIST_GRACE`` (seconds, default 5), ``CHECKLIST_WHEN_EMPTY`` (default
``shutdown``), ``CHECKLIST_SLOW_CLEANUP`` (seconds each cleanup takes, default 0),
``CHECKLIST_CLEANUP_TIMEOUT`` (default 3).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli
from livekit.agents.voice.room_io import RoomOptions

from livekit_lifecycle import LifecycleConfig, Session
from livekit_lifecycle.agents import for_job

log = logging.getLogger("checklist")

server = AgentServer()


class Resource:
    """Stands for a TTS client: says when it is closed, and how often."""

    def __init__(self) -> None:
        self.closes = 0

    async def aclose(self) -> None:
        self.closes += 1
        log.info("checklist.resource_closed", extra={"closes": self.closes})


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    grace = float(os.environ.get("CHECKLIST_GRACE", "5"))
    slow = float(os.environ.get("CHECKLIST_SLOW_CLEANUP", "0"))
    session: AgentSession[Any] = AgentSession()
    manager = await for_job(
        ctx,
        session=session,
        config=LifecycleConfig(
            grace_period=grace,
            cleanup_timeout=float(os.environ.get("CHECKLIST_CLEANUP_TIMEOUT", "3")),
        ),
        resources=[Resource()],
        when_empty=os.environ.get("CHECKLIST_WHEN_EMPTY", "shutdown"),  # type: ignore[arg-type]
    )

    @manager.add_cleanup
    async def cleanup(user: Session) -> None:
        if slow:
            await asyncio.sleep(slow)
        log.info(
            "checklist.cleanup",
            extra={"key": user.key, "sid": user.sid, "user_id": user.user_id},
        )

    @manager.on("created")
    def identify(user: Session) -> None:
        manager.set_user_id(user.key, "id-" + user.key)

    await manager.start_session(
        Agent(instructions="checklist"), room_options=RoomOptions(audio_output=False)
    )
    log.info("checklist.agent_session", extra={"agent_session": id(session)})


if __name__ == "__main__":
    cli.run_app(server)
