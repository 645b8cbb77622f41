"""Running user code so that a failure or a hang in it cannot hurt the manager."""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["Outcome", "Report", "call_bounded", "describe"]


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


Report = Callable[[Outcome, BaseException | None], None]
"""Told about every outcome but OK: (outcome, exception or None)."""


async def call_bounded(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    timeout: float,
    report: Report,
    abandoned: set[asyncio.Future[Any]],
) -> Outcome:
    """Call ``fn(*args)``; if it returns an awaitable, wait for it at most ``timeout`` seconds.

    An exception (including the callback cancelling itself) is reported as
    FAILED, a timeout as TIMED_OUT; neither propagates. A timed-out awaitable
    is cancelled but not waited for: one that ignores cancellation is parked
    in ``abandoned`` (so it is not garbage-collected mid-flight) instead of
    stalling the caller. Cancelling the caller cancels the callback too.

    Synchronous callables run inline and cannot be bounded: a blocking one
    blocks the event loop. That is documented for users.
    """
    try:
        result = fn(*args)
    except (Exception, asyncio.CancelledError) as exc:
        # A sync callback raising CancelledError did not cancel *us*.
        report(Outcome.FAILED, exc)
        return Outcome.FAILED
    if result is None or not inspect.isawaitable(result):  # None: the common sync case, cheaply
        return Outcome.OK
    future = asyncio.ensure_future(result)
    try:
        done, _ = await asyncio.wait({future}, timeout=max(timeout, 0.0))
    except asyncio.CancelledError:
        future.cancel()
        raise
    if not done:
        future.cancel()
        abandoned.add(future)
        future.add_done_callback(_forget(abandoned))
        report(Outcome.TIMED_OUT, None)
        return Outcome.TIMED_OUT
    if future.cancelled():
        report(Outcome.FAILED, asyncio.CancelledError())
        return Outcome.FAILED
    error = future.exception()
    if error is not None:
        report(Outcome.FAILED, error)
        return Outcome.FAILED
    return Outcome.OK


def _forget(abandoned: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    def done(future: asyncio.Future[Any]) -> None:
        abandoned.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it a second time

    return done


def describe(fn: object) -> str:
    """A readable name for a callback in logs."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)
