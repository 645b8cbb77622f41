"""A LiveKit client in its own process, for tests that kill it.

Usage: ``python client_process.py URL TOKEN [TONE_HZ]``.

Prints ``ready <participant sid>`` once connected; with ``TONE_HZ`` it then
publishes a microphone track playing that tone and prints ``published <track sid>``.
Then it waits to be killed. It exits by itself after ``LIFETIME`` seconds so
a failed test never leaves it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from livekit import rtc

LIFETIME = 60.0


async def main(url: str, token: str, tone_hz: float | None) -> None:
    room = rtc.Room()
    await room.connect(url, token)
    print("ready", room.local_participant.sid, flush=True)
    async with contextlib.AsyncExitStack() as stack:
        if tone_hz is not None:
            from livekit_loopback.audio import Tone

            tone = await stack.enter_async_context(Tone(tone_hz))
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            publication = await room.local_participant.publish_track(tone.track, options)
            print("published", publication.sid, flush=True)
        try:
            await asyncio.sleep(LIFETIME)
        finally:
            await room.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else None))
