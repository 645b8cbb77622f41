"""An agent process for the fault-injection suite (tests/e2e/test_fault_injection.py).

Usage: ``python fault_agent.py URL TOKEN REDIS_URL NAMESPACE LEASE_TTL SEED``.

A LifecycleManager with a RedisStore on a real room, doing what an application does: it
names each new session's user (``u-<identity>``) and marks every connection it sees go
active in the session's ``data`` (``c:<sid>``: a set that only grows while the session
lives, so the test can tell when an acknowledged write was lost). Its cleanup callback
takes a while (0 to 0.3 s, fixed by SEED and the connection's sid), so a SIGKILL lands
inside cleanups too.

One line per fact, for the test's history (fields separated by spaces):

- ``ready <owner>`` once attached;
- ``active <key> <sid> <user_id>`` when a connection goes active;
- ``cleanup <key> <sid> <token> <retry>`` when the callbacks start (``token`` is ``-`` for a
  claim the store could not verify), ``cleaned <key> <sid>`` when they are done.

The library's log records go to stderr, one event name a line (the test counts them). It
shuts down gracefully on ``quit`` (or EOF) on stdin, and by itself after ``LIFETIME``
seconds so a failed test never leaves it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys

from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State, Transition
from livekit_lifecycle.stores import RedisStore

LIFETIME = 600.0
GRACE = 300.0
"""Longer than any run: a session lives until the final shutdown, so its record may only grow."""


def say(*fields: object) -> None:
    print(*fields, flush=True)


async def main(
    url: str, token: str, redis_url: str, namespace: str, lease: float, seed: str
) -> None:
    store = RedisStore.from_url(redis_url, namespace=namespace, timeout=0.5, lease_ttl=lease)
    manager = LifecycleManager(
        LifecycleConfig(grace_period=GRACE, cleanup_timeout=5.0, store=store)
    )
    manager.add_resource(store, name="redis")

    @manager.on("created")
    def created(session: Session) -> None:
        if session.user_id is None:
            manager.set_user_id(session.key, f"u-{session.identity}")

    @manager.on("state_changed")
    def changed(session: Session, transition: Transition) -> None:
        if transition.dest is State.ACTIVE:
            session.data[f"c:{session.sid}"] = 1
            say("active", session.key, session.sid, session.user_id)

    @manager.add_cleanup
    async def cleanup(session: Session) -> None:
        claim = session.cleanup_claim
        token = "-" if claim is None else claim.token
        retry = 0 if claim is None else int(claim.retry)
        say("cleanup", session.key, session.sid, token, retry)
        await asyncio.sleep(random.Random(f"{seed}:{session.sid}").uniform(0.0, 0.3))
        say("cleaned", session.key, session.sid)

    room = rtc.Room()
    await room.connect(url, token)
    manager.attach(room)
    assert manager._persist is not None
    say("ready", manager._persist.owner)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readline(), LIFETIME)  # "quit", or EOF
    await manager.aclose()
    await room.disconnect()


if __name__ == "__main__":
    # The library's records, one event name a line, on stderr (the test's log file per agent).
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    url, token, redis_url, namespace, lease, seed = sys.argv[1:7]
    asyncio.run(main(url, token, redis_url, namespace, float(lease), seed))
