"""Media soak: one audio track forwarded by the LoopbackServer for N minutes, memory must stay flat.

Usage::

    .venv/bin/python -m benchmarks.media_soak              # 30 minutes
    .venv/bin/python -m benchmarks.media_soak --minutes 1  # a quick look

One real ``rtc.Room`` publishes a 440 Hz tone, another subscribes and reads
every frame through ``rtc.AudioStream``; the server decodes, fans out and
re-encodes each frame. At every tenth of the run the script collects garbage
and samples the process RSS (server, both SDK clients and libwebrtc: one
process), the interpreter's live blocks, the server's pending tasks, the
audio received so far and its pitch. Growth is the last sample minus the
one taken after warm-up (the first tenth). Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from livekit import rtc

from livekit_loopback import LoopbackServer
from livekit_loopback.audio import SAMPLE_RATE, Tone, dominant_frequency

CHECKPOINTS = 10
FREQUENCY = 440.0
_WINDOW = SAMPLE_RATE // 2  # the pitch is measured on the last 0.5 s
_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    rss: int
    blocks: int
    tasks: int
    received: float
    """Seconds of audio the subscriber has read so far (its SDK plays silence
    when no packet comes: the pitch, not this, shows the tone gets through)."""
    pitch: float


class Listener:
    """Reads a received track for as long as it lives, keeping the last 0.5 s."""

    def __init__(self, track: rtc.Track) -> None:
        self.samples = 0
        self._last = np.zeros(_WINDOW, dtype=np.int16)
        self._stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for event in self._stream:
            chunk = np.frombuffer(event.frame.data, dtype=np.int16)
            self.samples += len(chunk)
            self._last = np.concatenate((self._last, chunk))[-_WINDOW:]

    def pitch(self) -> float:
        return dominant_frequency(self._last)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._stream.aclose()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def soak(minutes: float) -> list[Sample]:
    samples: list[Sample] = []
    async with LoopbackServer() as server:
        publisher = await server.connect("publisher", "soak")
        subscriber = await server.connect("subscriber", "soak")
        subscribed: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()

        def on_subscribed(track: rtc.Track, *_: object) -> None:
            if not subscribed.done():
                subscribed.set_result(track)

        subscriber.on("track_subscribed", on_subscribed)
        async with Tone(FREQUENCY) as tone:
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await publisher.local_participant.publish_track(tone.track, options)
            listener = Listener(await asyncio.wait_for(subscribed, 30))
            try:
                start = time.monotonic()
                step = minutes * 60 / CHECKPOINTS
                for checkpoint in range(1, CHECKPOINTS + 1):
                    await asyncio.sleep(start + checkpoint * step - time.monotonic())
                    gc.collect()
                    samples.append(
                        Sample(
                            at=time.monotonic() - start,
                            rss=_rss(),
                            blocks=sys.getallocatedblocks(),
                            tasks=server.pending_tasks,
                            received=listener.samples / SAMPLE_RATE,
                            pitch=listener.pitch(),
                        )
                    )
                    _print_sample(samples[-1])
            finally:
                await listener.aclose()
    return samples


def _print_sample(sample: Sample) -> None:
    print(
        f"  t={sample.at:7.1f}s  rss={sample.rss / _MB:7.1f} MB  blocks={sample.blocks:>9}"
        f"  tasks={sample.tasks:>3}  received={sample.received:7.1f}s"
        f"  pitch={sample.pitch:6.1f} Hz",
        flush=True,
    )


def report(samples: Sequence[Sample], minutes: float) -> str:
    warm, middle, last = samples[0], samples[len(samples) // 2], samples[-1]
    rss_growth = (last.rss - warm.rss) / _MB
    late_growth = (last.rss - middle.rss) / _MB
    late_span = (last.at - middle.at) / 60
    lines = [
        f"media soak: one audio track, {minutes:g} min, {len(samples)} samples",
        f"  rss after warm-up {warm.rss / _MB:.1f} MB, at the end {last.rss / _MB:.1f} MB:"
        f" growth {rss_growth:+.2f} MB; over the second half {late_growth:+.2f} MB"
        f" ({late_growth / late_span if late_span else 0:+.3f} MB/min)",
        f"  live blocks growth {last.blocks - warm.blocks:+d};"
        f" server tasks {warm.tasks} -> {last.tasks}",
        f"  audio received {last.received:.1f} s in {last.at:.1f} s"
        f" ({last.received / last.at:.2%} of real time);"
        f" median pitch {statistics.median(s.pitch for s in samples):.1f} Hz"
        f" (sent {FREQUENCY:g} Hz)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.media_soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    samples = asyncio.run(soak(args.minutes))
    print(report(samples, args.minutes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
