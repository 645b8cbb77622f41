""":class:`StoreWriter`: a manager's sessions written behind, off the event path."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from livekit_lifecycle.log import get_logger

from ._json import check_json
from ._protocol import SessionStore, StoreWrite
from ._record import SessionRecord, record_ttl

__all__ = ["STORE_STATS", "StoreWriter"]

STORE_STATS = (
    "store_writes",
    "store_errors",
    "store_outages",
    "store_unserialisable",
    "store_claims_lost",
    "store_claims_unverified",
)
"""The counters a durable store adds to ``LifecycleManager.stats``."""

_VALUE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)
"""What encoding a record raises: the record is at fault, not the store."""
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0
_CLEANED_KEPT = 64
"""Cleaned sids kept per key until written (see ``StoreWrite.cleaned``)."""


class StoreWriter:
    """Writes marked sessions to ``store`` from one task: ordered, coalesced, never blocking.

    :meth:`mark` is all the event path does (a dict insert). A key is written
    once ``coalesce`` seconds (50 ms) have passed since its first mark: the task
    then renders its *current* record, so a session that changed ten times
    meanwhile (or while a write was in flight) is written once, in its latest
    state, one session's writes can never overtake each other, and a session
    that came and went within 50 ms of its first change is never written at
    all (each key's own 50 ms, not a window shared with older marks: under a
    steady stream of changes a shared window would write every session alive
    at its end, however young). 50 ms covers a cleanup's claim on a busy loop
    (docs/stores.md, "How writes happen").

    A failing store starts an outage: logged once (``store.unavailable``),
    counted (``stats["store_outages"]``, each failed attempt in
    ``store_errors``), retried with backoff while the manager goes on in
    memory. When the store answers again (``store.recovered``) every live
    session is written back, so what the manager acknowledged is not lost.

    Nothing is rewritten to keep records alive: the store keeps the records of
    a live process (:class:`RedisStore`: its lease), so the steady cost is the
    store's, per process and room, not per session. A session's history is
    sent as what is new since its previous write (``StoreWrite.appended``).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        room: Callable[[], str | None],
        render: Callable[[str], SessionRecord | None],
        live_keys: Callable[[], Iterable[str]],
        grace_period: float,
        stats: dict[str, int],
        timeout: float = 5.0,
        coalesce: float = 0.05,
    ) -> None:
        self._store = store
        self._room = room
        self._render = render
        self._live_keys = live_keys
        self._grace_period = grace_period
        self._stats = stats
        self._timeout = timeout
        self._coalesce = coalesce
        self._dirty: dict[str, float] = {}
        """Key -> when it was first marked since its last write (monotonic), oldest first."""
        self._written: dict[str, dict[str, object]] = {}
        """Each session's newest history entry the store has: what is new is after it."""
        self._stored: set[str] = set()
        """Keys the store may hold a record of (written, or marked ``stored``): a session
        gone before its first write (within one coalescing window) needs no delete."""
        self._cleaned: dict[str, list[str]] = {}
        """Key -> sids whose cleanup ended, oldest first, until a write carried them."""
        self._refused: set[str] = set()
        """Keys of the batch in flight the store refused (their previous record stays)."""
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._stopped = False
        self._log = get_logger()

    @property
    def available(self) -> bool:
        """False during an outage (from a failed store call until the next one that works)."""
        return self._down_since is None

    def mark(self, key: str, *, stored: bool = False, cleaned: str = "") -> None:
        """Have ``key``'s session written (or its record deleted, once it is gone). O(1).

        ``stored``: the store holds a record of ``key`` this writer did not write
        (a restored one): its deletion is never skipped (see :meth:`_batch`).
        ``cleaned``: the cleanup of this connection (sid) of ``key`` ended: sent with
        the key's next write, or deletion (``StoreWrite.cleaned``), until one lands.
        """
        if stored:
            self._stored.add(key)
        if cleaned:
            sids = self._cleaned.setdefault(key, [])
            sids.append(cleaned)
            if len(sids) > _CLEANED_KEPT:
                del sids[0]
        self.changed(key)

    def changed(self, key: str) -> None:
        """:meth:`mark` with no options: what every change of state calls (one dict
        lookup when ``key`` waits already)."""
        dirty = self._dirty
        if key not in dirty:
            # Re-marking keeps the first time and the place: the dict stays oldest first.
            dirty[key] = time.monotonic()
            if not self._wake.is_set():
                self._wake.set()
                self._settled.clear()

    def gone(self, key: str) -> None:
        """``key``'s session ended: its record is deleted, if the store may hold one; one
        still waiting for its first write is dropped (nothing to write, nothing to delete)."""
        if key in self._stored:
            self.changed(key)
        else:
            self._dirty.pop(key, None)
            self._cleaned.pop(key, None)
            self._written.pop(key, None)

    def mark_all(self) -> None:
        for key in self._live_keys():
            self.mark(key)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="livekit-lifecycle:store-writer"
            )

    async def flush(self, timeout: float) -> bool:
        """Wait until every marked session is written; False if ``timeout`` passes first."""
        if self._task is None:
            return not self._dirty
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float) -> bool:
        """Flush (at most ``timeout`` s), then stop. True when nothing was left unwritten."""
        flushed = await self.flush(timeout)
        # A flag as well as the cancel: a client library may turn the cancellation
        # of a call in flight into its own error, which the loop would retry.
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return flushed

    def failed(self, operation: str, exc: BaseException) -> None:
        """Count a failed store call; the first of an outage is logged."""
        self._stats["store_errors"] += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._stats["store_outages"] += 1
            self._log.warning(
                "store.unavailable",
                category="store",
                room=self._room(),
                store=repr(self._store),
                operation=operation,
                error=f"{type(exc).__name__}: {exc}",
            )

    def succeeded(self) -> None:
        """Note a store call that worked; ends an outage and writes every session back."""
        if self._down_since is None:
            return
        downtime = time.monotonic() - self._down_since
        self._down_since = None
        self.mark_all()
        self._log.info(
            "store.recovered",
            category="store",
            room=self._room(),
            store=repr(self._store),
            downtime=round(downtime, 3),
            rewriting=len(self._dirty),
        )

    async def _run(self) -> None:
        retry = _RETRY_FIRST
        while not self._stopped:
            room = self._room()
            if not self._dirty or not room:
                self._wake.clear()
                if not self._dirty:
                    self._settled.set()
                await self._wake.wait()
                continue
            keys = await self._due()
            batch = self._batch(room, keys)
            if not batch:  # every key came and went unwritten
                continue
            try:
                await asyncio.wait_for(self._store.write(batch), self._timeout)
            except asyncio.CancelledError:
                raise
            except _VALUE_ERRORS:
                # The store could not encode an entry: not an outage. Each entry alone,
                # so the one that fails is refused and everyone else's is written.
                if not await self._write_one_by_one(room, batch):
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX)
                    continue
            except Exception as exc:
                for key in keys:  # rendered afresh (whole history) on the next attempt
                    self.changed(key)
                    self._written.pop(key, None)
                self.failed("write", exc)
                await asyncio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX)
                continue
            else:
                self._stats["store_writes"] += len(batch)
            retry = _RETRY_FIRST
            for entry in batch:
                if entry.cleaned:
                    self._sent_cleaned(entry)
                if entry.record is None:
                    self._stored.discard(entry.key)
                history = entry.record.history if entry.record is not None else ()
                if entry.key in self._refused:
                    continue  # the store has its previous record: appended to that next time
                if history:
                    self._written[entry.key] = history[-1]
                else:
                    self._written.pop(entry.key, None)
            self._refused.clear()
            self.succeeded()

    async def _due(self) -> list[str]:
        """The keys first marked at least ``coalesce`` s ago (waiting for the oldest if
        none is), taken out of the dirty set. Called with at least one key marked."""
        dirty = self._dirty
        wait = next(iter(dirty.values())) + self._coalesce - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        ripe = time.monotonic() - self._coalesce
        keys = []
        for key, first in dirty.items():
            if first > ripe:
                break  # oldest first: the rest are younger
            keys.append(key)
        for key in keys:
            del dirty[key]
        return keys

    def _sent_cleaned(self, entry: StoreWrite) -> None:
        sids = self._cleaned.get(entry.key)
        if sids is not None:
            sent = set(entry.cleaned)
            sids[:] = [sid for sid in sids if sid not in sent]  # newer ones stay
            if not sids:
                del self._cleaned[entry.key]

    async def _write_one_by_one(self, room: str, batch: list[StoreWrite]) -> bool:
        """Write ``batch`` entry by entry after ``error``; False when the store failed (outage)."""
        for entry in batch:
            try:
                await asyncio.wait_for(self._store.write([entry]), self._timeout)
            except asyncio.CancelledError:
                raise
            except _VALUE_ERRORS as exc:
                self._unserialisable(room, entry.key, exc)
                continue
            except Exception as exc:
                for later in batch[batch.index(entry) :]:  # rendered afresh next time
                    self.changed(later.key)
                self.failed("write", exc)
                return False
            self._stats["store_writes"] += 1
        return True

    def _unserialisable(self, room: str, key: str, exc: BaseException) -> None:
        # That session's previous record stays, and its next change tries again;
        # no other session's write waits for it.
        self._stats["store_unserialisable"] += 1
        self._refused.add(key)
        self._log.error(
            "store.unserialisable",
            category="store",
            room=room,
            key=key,
            error=f"{type(exc).__name__}: {exc}",
        )

    def _appended(self, key: str, record: SessionRecord) -> int | None:
        """Entries of ``record.history`` after the newest one the store has (None: all)."""
        last = self._written.get(key)
        if last is None:
            return None
        history = record.history
        for index in range(len(history) - 1, -1, -1):
            if history[index] == last:
                return len(history) - 1 - index
        return None

    def _batch(self, room: str, keys: list[str]) -> list[StoreWrite]:
        batch = []
        now = time.time()
        margin = self._store.ttl_margin
        for key in keys:
            try:
                record = self._render(key)
                if record is not None:
                    # In-place mutation of a nested value is the only way past SessionData.
                    check_json(record.data, "session data")
                    ttl = record_ttl(record, self._grace_period, margin, now)
                else:
                    if key in self._stored:  # else never written: nothing to delete
                        cleaned = tuple(self._cleaned.get(key, ()))
                        batch.append(StoreWrite(room, key, None, 0.0, cleaned=cleaned))
                    else:
                        self._cleaned.pop(key, None)
                    self._written.pop(key, None)
                    continue
            except Exception as exc:
                self._unserialisable(room, key, exc)
                continue
            self._stored.add(key)  # before the write: a failed one may have landed
            appended = self._appended(key, record)
            cleaned = tuple(self._cleaned.get(key, ()))
            batch.append(StoreWrite(room, key, record, ttl, appended, cleaned))
        return batch
