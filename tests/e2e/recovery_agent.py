"""The agent the crash-recovery tests run: ``python recovery_agent.py start``.

A livekit-agents worker as a user with a Redis store writes one: ``for_job``
with a ``RedisStore``, an AgentSession started with ``start_session`` (so a job
dispatched after a crash gets the conversation back), a cleanup callback, and
a ``created`` listener that identifies the user and keeps app data.

The AgentSession's model is :class:`RecallLLM` (``tests/e2e/recall_llm.py``), so chat
turns run without cloud models: the user sends text on ``lk.chat`` and the
reply lists every user message in the context the model was given, which is
how a test sees what a new job's agent knows of the conversation before the
crash.

What the job does is read back from the worker's log (the library's structlog
events and the lines below, as JSON through livekit-agents' log forwarding),
and each cleanup is appended to the file ``RECOVERY_CLEANUPS`` names, shared by
every worker of a test, so "cleaned once across the dead job and the new one"
is checked on one record.

Configured by the environment: ``RECOVERY_REDIS_URL``, ``RECOVERY_NAMESPACE``,
``RECOVERY_CLEANUPS`` (required), ``RECOVERY_GRACE`` (seconds, default 20),
``RECOVERY_LEASE_TTL`` (seconds, default: the store's), ``RECOVERY_WATCHDOG`` (set: the
worker process runs a watchdog, as docs/recovery.md's in-worker recipe does).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    ConversationItemAddedEvent,
    JobContext,
    cli,
)
from livekit.agents.voice.room_io import RoomOptions

from livekit_lifecycle import LifecycleConfig, Session
from livekit_lifecycle.agents import for_job
from livekit_lifecycle.stores import RedisStore
from livekit_lifecycle.watchdog import Watchdog, resume_info
from tests.e2e.recall_llm import RecallLLM  # the test puts the repository on PYTHONPATH

log = logging.getLogger("recovery")

server = AgentServer()
watchdogs: list[Watchdog] = []
"""The worker process's watchdog (a strong reference: the loop only keeps its task weakly)."""


def open_store(**options: Any) -> RedisStore:
    options["namespace"] = os.environ["RECOVERY_NAMESPACE"]
    return RedisStore.from_url(os.environ["RECOVERY_REDIS_URL"], **options)


@server.on("worker_started")
def start_watchdog() -> None:
    """The in-worker recipe: one watchdog in the worker process (not in its jobs)."""
    if os.environ.get("RECOVERY_WATCHDOG"):
        watchdog = Watchdog(open_store(), interval=0.5)  # LIVEKIT_* from the environment
        watchdog.start()
        watchdogs.append(watchdog)


def record_cleanup(user: Session, pid: int) -> None:
    """One JSON line per cleanup, appended in one write (O_APPEND: lines never interleave)."""
    claim = user.cleanup_claim
    line = json.dumps(
        {
            "key": user.key,
            "sid": user.sid,
            "user_id": user.user_id,
            "pid": pid,
            "retry": bool(claim is not None and claim.retry),
            "at": time.time(),
        }
    )
    fd = os.open(os.environ["RECOVERY_CLEANUPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    store_options: dict[str, Any] = {}
    if "RECOVERY_LEASE_TTL" in os.environ:
        store_options["lease_ttl"] = float(os.environ["RECOVERY_LEASE_TTL"])
    store = open_store(**store_options)
    info = resume_info(ctx.job.metadata)
    log.info(
        "recovery.job_started",
        extra={"resume": info is not None, "dead_owner": (info or {}).get("dead_owner")},
    )
    session: AgentSession[Any] = AgentSession(llm=RecallLLM())
    manager = await for_job(
        ctx,
        session=session,
        config=LifecycleConfig(
            store=store,
            grace_period=float(os.environ.get("RECOVERY_GRACE", "20")),
            cleanup_timeout=3.0,
        ),
        resources=[store],
    )
    pid = os.getpid()

    @manager.add_cleanup
    async def cleanup(user: Session) -> None:
        record_cleanup(user, pid)
        log.info("recovery.cleanup", extra={"key": user.key, "sid": user.sid})

    @manager.on("created")
    def identify(user: Session) -> None:
        # Restored sessions are `created` too: what the dead job set is kept.
        if user.user_id is None:
            manager.set_user_id(user.key, "id-" + user.key)
        user.data.setdefault("first_job_pid", pid)

    @session.on("conversation_item_added")
    def said(event: ConversationItemAddedEvent) -> None:
        item = event.item
        if item.type != "message":
            return  # an agent handoff
        linked = manager.linked_session
        if item.role == "user" and linked is not None:
            linked.data["turns"] = linked.data.get("turns", 0) + 1
        log.info(
            "recovery.chat",
            extra={"role": item.role, "text": item.text_content, "key": manager.linked_key},
        )

    await manager.start_session(
        Agent(instructions="recall"),
        room_options=RoomOptions(audio_input=False, audio_output=False),
    )
    linked = manager.linked_session
    log.info(
        "recovery.agent_session",
        extra={
            "history": [
                m.text_content
                for m in session.history.messages()
                if m.role in ("user", "assistant")
            ],
            "linked": manager.linked_key,
            "data": None if linked is None else dict(linked.data),
        },
    )


if __name__ == "__main__":
    cli.run_app(server)
