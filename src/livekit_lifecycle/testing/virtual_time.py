"""A real asyncio event loop whose clock jumps instead of waiting (trio's "autojump" clock).

The loop is an ordinary ``asyncio.SelectorEventLoop``: tasks, futures, timers,
cancellation and ``asyncio.wait``/``wait_for`` timeouts all run through
asyncio's own code. Only the clock differs: ``loop.time()`` starts at 0 and
moves only when every task is blocked and the next thing to happen is a timer,
at which point the clock jumps straight to that timer. So a grace period of
30 s, a cleanup that hangs until its 10 s timeout, or ``await asyncio.sleep(30)``
cost no wall-clock time, and the order of events is fully deterministic: no
sleep-and-hope, no flaky margins.

When nothing is ready and no timer is scheduled, the loop would wait forever:
that is a deadlock in the code under test, and it raises instead of hanging.

Use it for code that only waits on the loop (``RoomDriver`` rooms, the
manager's timers); real I/O such as a :class:`LoopbackServer` connection
takes real time, which this clock does not see.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["Deadlock", "VirtualTimeLoop", "clock", "run"]

T = TypeVar("T")

_IDLE_LIMIT = 2.0
"""Real seconds to wait for another thread's wake-up before calling an idle loop deadlocked."""


class Deadlock(RuntimeError):
    """Every task is waiting and nothing (no timer, no I/O) can ever wake one up."""


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop with a virtual, autojumping clock."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_AutojumpSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds`` now, as a blocking call of that length would."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds


class _AutojumpSelector(selectors.BaseSelector):
    """Polls the real selector without blocking; jumps the clock instead of sleeping."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._inner = selectors.DefaultSelector()
        self._loop = loop

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:
            # Nothing scheduled: only another thread (call_soon_threadsafe) could wake us.
            ready = self._inner.select(_IDLE_LIMIT)
            if not ready:
                raise Deadlock("every task is waiting and no timer is scheduled")
            return ready
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()


def clock() -> VirtualTimeLoop:
    """The running loop, which must be a :class:`VirtualTimeLoop`."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError(
            "not a virtual-time loop: run this coroutine with"
            " livekit_lifecycle.testing.virtual_time.run"
        )
    return loop


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a fresh :class:`VirtualTimeLoop`, then close it.

    Tasks still pending at the end are cancelled (tests that care assert there
    are none before returning).
    """
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
