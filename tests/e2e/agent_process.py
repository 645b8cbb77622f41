"""An agent with a Redis-backed manager in its own process, for the crash test.

Usage: ``python agent_process.py URL TOKEN REDIS_URL NAMESPACE GRACE_PERIOD``.

Gives every new session ``user_id = "u-<identity>"`` and ``data = {"joined": <identity>}``,
prints ``ready``, then one line per fact the test waits on: ``state <key> <state>``
and ``cleanup <key> <sid>``. Killed by the test; exits by itself after
``LIFETIME`` seconds so a failed test never leaves it running.
"""

from __future__ import annotations

import asyncio
import sys

from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, Transition
from livekit_lifecycle.stores import RedisStore

LIFETIME = 60.0


async def main(url: str, token: str, redis_url: str, namespace: str, grace: float) -> None:
    store = RedisStore.from_url(redis_url, namespace=namespace)
    manager = LifecycleManager(LifecycleConfig(grace_period=grace, store=store))

    @manager.on("created")
    def created(session: Session) -> None:
        if session.user_id is None:
            manager.set_user_id(session.key, f"u-{session.identity}")
            session.data["joined"] = session.identity

    @manager.on("state_changed")
    def changed(session: Session, transition: Transition) -> None:
        print("state", session.key, transition.dest.value, flush=True)

    @manager.add_cleanup
    def cleanup(session: Session) -> None:
        print("cleanup", session.key, session.sid, flush=True)

    room = rtc.Room()
    await room.connect(url, token)
    manager.attach(room)
    print("ready", flush=True)
    await asyncio.sleep(LIFETIME)
    await manager.aclose()
    await room.disconnect()


if __name__ == "__main__":
    url, token, redis_url, namespace, grace = sys.argv[1:6]
    asyncio.run(main(url, token, redis_url, namespace, float(grace)))
