"""Running user code so that a failure or a hang in it cannot hurt the manager, and
telling when two registrations are the same callback."""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Outcome", "Report", "Supervisor", "call_bounded", "describe"]


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


def same_callable(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` register the same callback (or resource): the one rule
    every de-duplication uses (cleanups, resources, listeners, the compat layer).

    - A bound method (``self.clear_user``, ``items.append``) is a new object on
      every attribute access: two are the same when bound to the same object
      (``is``) and wrapping the same function, as Python's own ``==`` says.
    - A :func:`functools.partial` is the same as another partial of the same
      callable (by this rule) with equal (``==``) ``args`` and ``keywords``;
      partial objects themselves only compare by identity.
    - Anything else (functions, lambdas, callable objects, resources) is the
      same only as itself: a ``lambda`` written twice makes two callbacks, and
      two resources that compare equal are still two things to close.
    """
    if a is b:
        return True
    if isinstance(a, _BOUND_METHODS) and isinstance(b, _BOUND_METHODS):
        return bool(a == b)
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return (
            type(a) is type(b)
            and same_callable(a.func, b.func)
            and _equal(a.args, b.args)
            and _equal(a.keywords, b.keywords)
        )
    return False


def contains_callable(registered: Iterable[object], fn: object) -> bool:
    """Whether ``registered`` already holds a callable that is :func:`same_callable` as ``fn``."""
    return any(same_callable(fn, existing) for existing in registered)


class CallbackKey:
    """A dict key for a callback, hashed and compared by :func:`same_callable`."""

    __slots__ = ("_hash", "callback")

    def __init__(self, callback: Callable[..., Any]) -> None:
        self.callback = callback
        self._hash = _hash(callback)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallbackKey) and same_callable(self.callback, other.callback)

    def __hash__(self) -> int:
        return self._hash


_BOUND_METHODS = (types.MethodType, types.BuiltinMethodType)


def _hash(fn: object) -> int:
    if isinstance(fn, functools.partial):
        return _hash(fn.func)  # its args may be unhashable; equality decides
    if isinstance(fn, _BOUND_METHODS):
        return hash(fn)  # from the bound object's identity: works for unhashable objects
    return id(fn)


def _equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an argument whose == raises (or is ambiguous) is not the same
        return False


class Supervisor:
    """The work a manager started and waits for, and how long user code may take.

    Shared by a manager's parts: the session runtime and the cleanup activity
    run callbacks under it, the notifier runs async listeners under it, and the
    façade's ``idle()`` and shutdown wait on :attr:`tasks`.
    """

    __slots__ = ("abandoned", "cancelling", "deadline", "tasks", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        """Seconds one callback may take (``config.cleanup_timeout``)."""
        self.deadline: float | None = None
        """The shutdown's deadline (loop time) once it started: no callback runs past it."""
        self.cancelling = False
        """True while the shutdown cancels work stuck past its deadline."""
        self.tasks: set[asyncio.Future[Any]] = set()
        """Activities, async listeners and the restore: what ``idle()`` waits for."""
        self.abandoned: set[asyncio.Future[Any]] = set()
        """Timed-out awaitables that ignore their cancellation (see :func:`call_bounded`)."""

    def callback_timeout(self) -> float:
        """Seconds a callback started now may take: ``timeout``, cut at the deadline."""
        timeout = self.timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - asyncio.get_running_loop().time())
        return max(timeout, 0.0)

    def track(self, future: asyncio.Future[Any]) -> None:
        """Count ``future`` as work ``idle()`` and the shutdown wait for, until it is done."""
        self.tasks.add(future)
        future.add_done_callback(self.tasks.discard)

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...], report: Report) -> Outcome:
        """:func:`call_bounded` under this supervisor's timeout and deadline."""
        return await call_bounded(fn, args, self.callback_timeout(), report, self.abandoned)
