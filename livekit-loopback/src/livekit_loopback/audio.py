"""Audio you can recognise at the other end: publish a sine tone, measure what arrives.

For end-to-end tests of media paths (a :class:`~livekit_loopback.LoopbackServer`
forwards published tracks): a :class:`Tone` is a real ``rtc.LocalAudioTrack``
fed with a sine wave in real time; :func:`record` reads a received track
through ``rtc.AudioStream``; :func:`dominant_frequency` says which frequency
the samples carry. Opus changes samples but keeps the pitch, so "440 Hz in,
440 Hz out" is a test that can fail, where "some frames arrived" is not::

    async with Tone(440) as tone:
        await publisher.local_participant.publish_track(tone.track)
        track = ...  # the RemoteAudioTrack a subscriber's track_subscribed got
        samples = await record(track, seconds=0.5)
        assert abs(dominant_frequency(samples) - 440) < 10
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import numpy as np
import numpy.typing as npt
from livekit import rtc

__all__ = ["SAMPLE_RATE", "Tone", "dominant_frequency", "record"]

SAMPLE_RATE = 48000
_FRAME = SAMPLE_RATE // 100  # 10 ms, what the SDK's audio source consumes per frame


class Tone:
    """A local audio track playing a sine wave at ``frequency`` Hz, until closed.

    Use it as an async context manager; :attr:`track` is the track to publish.
    The source paces the wave in real time (it blocks while its buffer is full).
    """

    def __init__(self, frequency: float, *, amplitude: float = 0.4, name: str = "tone") -> None:
        if not 0 < frequency < SAMPLE_RATE / 2:
            raise ValueError(f"frequency must be in (0, {SAMPLE_RATE // 2}) Hz, got {frequency}")
        if not 0 < amplitude <= 1:
            raise ValueError(f"amplitude must be in (0, 1], got {amplitude}")
        self.frequency = frequency
        self._amplitude = amplitude * 32767
        self.source = rtc.AudioSource(SAMPLE_RATE, 1)
        self.track = rtc.LocalAudioTrack.create_audio_track(name, self.source)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tone:
        self._task = asyncio.get_running_loop().create_task(self._play(), name="tone")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop playing and close the source (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.source.aclose()

    async def _play(self) -> None:
        step = 2 * np.pi * self.frequency / SAMPLE_RATE
        start = 0
        while True:
            phase = step * np.arange(start, start + _FRAME)
            samples = (np.sin(phase) * self._amplitude).astype(np.int16)
            await self.source.capture_frame(
                rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, _FRAME)
            )
            start = (start + _FRAME) % SAMPLE_RATE


async def record(
    track: rtc.Track, seconds: float, *, skip: float = 0.2, timeout: float = 20.0
) -> npt.NDArray[np.int16]:
    """``seconds`` of mono 48 kHz samples of a received audio ``track``.

    Recording starts with the first sound: the silence a receiver plays
    before the first packet arrives is dropped, and so are the first
    ``skip`` seconds after it (the decoder's ramp-up is not the signal).

    Raises:
        TimeoutError: when the samples do not arrive within ``timeout`` seconds.
    """
    wanted = int((seconds + skip) * SAMPLE_RATE)
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    chunks: list[npt.NDArray[np.int16]] = []

    async def collect() -> None:
        have = 0
        async for event in stream:
            chunk = np.frombuffer(event.frame.data, dtype=np.int16).copy()
            if not chunks and not np.any(chunk):
                continue
            chunks.append(chunk)
            have += len(chunk)
            if have >= wanted:
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        got = sum(len(c) for c in chunks)
        raise TimeoutError(
            f"{got} of {wanted} samples arrived from track {track.sid} within {timeout}s"
        ) from None
    finally:
        await stream.aclose()
    return np.concatenate(chunks)[int(skip * SAMPLE_RATE) : wanted]


def dominant_frequency(samples: npt.NDArray[np.int16], sample_rate: int = SAMPLE_RATE) -> float:
    """The frequency (Hz) with the most energy in ``samples`` (0.0 for silence)."""
    if len(samples) == 0 or not np.any(samples):
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    spectrum[0] = 0.0  # a DC offset is not a tone
    frequencies = np.fft.rfftfreq(len(samples), 1 / sample_rate)
    return float(frequencies[int(np.argmax(spectrum))])
