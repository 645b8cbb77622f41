"""A LiveKit client in its own process, for tests that kill it.

Usage: ``python client_process.py URL TOKEN``.

Prints ``ready <participant sid>`` once connected, then waits to be killed.
It exits by itself after ``LIFETIME`` seconds so a failed test never leaves it running.
"""

from __future__ import annotations

import asyncio
import sys

from livekit import rtc

LIFETIME = 60.0


async def main(url: str, token: str) -> None:
    room = rtc.Room()
    await room.connect(url, token)
    print("ready", room.local_participant.sid, flush=True)
    try:
        await asyncio.sleep(LIFETIME)
    finally:
        await room.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
