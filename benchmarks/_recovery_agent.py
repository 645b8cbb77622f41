"""The worker ``benchmarks/recovery.py`` kills: ``python _recovery_agent.py start``.

A job as a user writes one with a durable store, with the defaults: ``for_job``,
a ``RedisStore`` (default lease), a model-less AgentSession started with
``start_session``. It logs ``bench.ready`` once its AgentSession started (after
the restored sessions and conversation were given back). Configured by the
environment: ``BENCH_REDIS_URL``, ``BENCH_NAMESPACE``, ``BENCH_LEASE_TTL``
(seconds; unset: the store's default).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli
from livekit.agents.voice.room_io import RoomOptions

from livekit_lifecycle import LifecycleConfig, Session
from livekit_lifecycle.agents import for_job
from livekit_lifecycle.stores import RedisStore

log = logging.getLogger("bench")

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    options: dict[str, Any] = {"namespace": os.environ["BENCH_NAMESPACE"]}
    if os.environ.get("BENCH_LEASE_TTL"):
        options["lease_ttl"] = float(os.environ["BENCH_LEASE_TTL"])
    store = RedisStore.from_url(os.environ["BENCH_REDIS_URL"], **options)
    session: AgentSession[Any] = AgentSession()
    manager = await for_job(
        ctx,
        session=session,
        config=LifecycleConfig(store=store, grace_period=30.0, cleanup_timeout=3.0),
        resources=[store],
        when_empty="keep",
    )

    @manager.on("created")
    def identify(user: Session) -> None:
        if user.user_id is None:
            manager.set_user_id(user.key, "id-" + user.key)

    await manager.start_session(
        Agent(instructions="bench"), room_options=RoomOptions(audio_input=False, audio_output=False)
    )
    log.info("bench.ready", extra={"sessions": len(manager.sessions)})


if __name__ == "__main__":
    cli.run_app(server)
