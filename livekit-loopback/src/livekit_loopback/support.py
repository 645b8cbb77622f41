"""For tests against a :class:`~livekit_loopback.LoopbackServer`: event recording, leak checks.

:class:`Recorder` keeps every event a real ``rtc.Room`` emits and waits on the
ones a test expects; :func:`no_leaks` is a fixture that fails a test leaving a
task, a socket or a Python thread behind. Used by this package's own tests and
by livekit-lifecycle's end-to-end tests.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc.room import EventTypes

__all__ = [
    "WAIT",
    "Event",
    "Recorder",
    "eventually",
    "needs_network",
    "no_leaks",
    "open_sockets",
    "webrtc_warmed_up",
]

WAIT = 10.0
"""Upper bound for anything that should happen within a second or two."""

_ROOM_EVENTS: tuple[EventTypes, ...] = (
    "participant_connected",
    "participant_active",
    "participant_disconnected",
    "participant_attributes_changed",
    "track_published",
    "track_unpublished",
    "track_muted",
    "track_unmuted",
    "track_subscribed",
    "track_unsubscribed",
    "participant_metadata_changed",
    "reconnecting",
    "reconnected",
    "disconnected",
)


@dataclass(frozen=True)
class Event:
    """One room event as a :class:`Recorder` saw it: its name and whom it was about."""

    name: str
    identity: str | None = None
    sid: str | None = None
    reason: int | None = None
    track: str | None = None


@dataclass
class Recorder:
    """Every event a real ``rtc.Room`` emits, in order, with waits on what should come."""

    events: list[Event] = field(default_factory=list)
    _waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = field(
        default_factory=list
    )

    @classmethod
    def on(cls, room: rtc.Room) -> Recorder:
        recorder = cls()
        for name in _ROOM_EVENTS:
            room.on(name, recorder._handler(name))
        return recorder

    def _handler(self, name: str) -> Callable[..., None]:
        def handle(*args: Any) -> None:
            participant = next((a for a in args if isinstance(a, rtc.RemoteParticipant)), None)
            publication = next((a for a in args if isinstance(a, rtc.TrackPublication)), None)
            reason: int | None = None
            if name == "participant_disconnected" and participant is not None:
                reason = participant.disconnect_reason
            elif name == "disconnected" and args:
                reason = args[0]
            event = Event(
                name,
                None if participant is None else participant.identity,
                None if participant is None else participant.sid,
                reason,
                None if publication is None else publication.sid,
            )
            self.events.append(event)
            for match, future in list(self._waiters):
                if not future.done() and match(event):
                    future.set_result(event)

        return handle

    def named(self, *names: str) -> list[Event]:
        return [e for e in self.events if e.name in names]

    async def wait_for(
        self, name: str, timeout: float = WAIT, *, after: int = 0, **fields: Any
    ) -> Event:
        """The first event (already seen or to come) named ``name`` whose fields match.

        With ``after``, events seen before ``self.events[after]`` do not count.
        """

        def match(event: Event) -> bool:
            return event.name == name and all(getattr(event, k) == v for k, v in fields.items())

        for event in self.events[after:]:
            if match(event):
                return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (match, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"no {name} event matching {fields} within {timeout}s; saw {self.events}"
            ) from None
        finally:
            self._waiters.remove(entry)


def _has_ice_address() -> bool:
    try:
        from livekit_loopback import ice_addresses
    except ImportError:  # no `testing` extra: the tests using this are not collected
        return False
    return bool(ice_addresses())


needs_network = pytest.mark.skipif(
    not _has_ice_address(), reason="needs a non-loopback network interface (libwebrtc)"
)
"""For tests that start a LoopbackServer themselves instead of using the fixture."""


def open_sockets() -> int:
    """Sockets this process has open now (Linux ``/proc``; -1 elsewhere)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return -1
    count = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Whether ``check()`` becomes true within ``timeout`` (closing happens on other threads)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _python_threads() -> set[threading.Thread]:
    # Native threads that call into Python (the SDK's, when it logs) show up
    # as _DummyThread and stay listed forever: they are not Python's to join.
    # The event loop's default executor ("asyncio_N", where aiortc encodes
    # forwarded media) is a pool the loop owns and shuts down when it closes.
    return {
        t
        for t in threading.enumerate()
        if not isinstance(t, threading._DummyThread) and not t.name.startswith("asyncio_")
    }


def _warm_up() -> None:
    """Connect one room once, so libwebrtc's one-time sockets exist before any test counts."""

    async def connect_once() -> None:
        from livekit_loopback import LoopbackServer, LoopbackUnavailable

        try:
            async with LoopbackServer() as server:
                room = await server.connect("warm-up", "warm-up")
                await room.disconnect()
        except LoopbackUnavailable:
            return

    asyncio.run(connect_once())


@pytest.fixture(scope="session")
def webrtc_warmed_up() -> Iterator[None]:
    """Once per session: libwebrtc's one-time sockets and threads exist before tests count."""
    try:
        import aiortc  # noqa: F401
    except ImportError:
        yield
        return
    _warm_up()
    yield


@pytest.fixture
async def no_leaks(webrtc_warmed_up: None) -> AsyncIterator[None]:
    """Fail the test if it leaves a task, a socket or a Python thread behind.

    Set up before (so torn down after) every other fixture of the test.
    """
    tasks_before = asyncio.all_tasks()
    sockets_before = open_sockets()
    threads_before = _python_threads()
    yield
    me = asyncio.current_task()  # teardown may run in another task than setup

    def new_tasks() -> set[asyncio.Task[Any]]:
        return {t for t in asyncio.all_tasks() - tasks_before if t is not me and not t.done()}

    if new_tasks():
        await asyncio.wait(new_tasks(), timeout=3.0)
    left = new_tasks()
    assert not left, f"tasks left behind: {sorted(repr(t) for t in left)}"
    assert await eventually(lambda: open_sockets() <= sockets_before), (
        f"sockets left behind: {open_sockets()} open, {sockets_before} before the test"
    )
    assert await eventually(lambda: len(_python_threads() - threads_before) == 0), (
        f"threads left behind: {_python_threads() - threads_before}"
    )
