"""Where the inspector's sessions come from: the :class:`Source` protocol and its sources."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from livekit_lifecycle._watch import Watcher, WatchSettings
    from livekit_lifecycle.manager import LifecycleManager
    from livekit_lifecycle.session import Session, Transition
    from livekit_lifecycle.stores import SessionStore

__all__ = [
    "Change",
    "ManagerSource",
    "RoomSource",
    "Snapshot",
    "Source",
    "StoreSource",
    "session_dict",
]

Snapshot = dict[str, dict[str, dict[str, Any]]]
"""Room name -> session key -> ``Session.as_dict()``."""


@dataclass(frozen=True, slots=True)
class Change:
    """One session changed: its new ``as_dict()``, and the transition that did it, if any.

    ``transition`` is ``None`` for a session that was just created (or one a
    source saw for the first time).
    """

    room: str
    session: dict[str, Any]
    transition: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return str(self.session["key"])


@runtime_checkable
class Source(Protocol):
    """What the inspector shows. A source for another backend (a session store...) is
    these four members: a one-line description, a snapshot, a change stream and
    ``aclose()``.
    """

    @property
    def description(self) -> str:
        """Shown at the top of the page ("room demo-room, in-process manager")."""
        ...

    async def snapshot(self) -> Snapshot:
        """Every session now, per room, as ``Session.as_dict()`` dicts."""
        ...

    def changes(self) -> AsyncIterator[Change]:
        """Changes from now on, in order, until the source closes (then the iteration ends)."""
        ...

    async def aclose(self) -> None:
        """Stop; ends every ``changes()`` iteration."""
        ...


HISTORY_SHOWN = 10
"""Transitions of a session sent to the page (the latest ones)."""


def session_dict(session: Session, *, show_data: bool) -> dict[str, Any]:
    """``session.as_dict()`` with its latest :data:`HISTORY_SHOWN` transitions, plus ``data``
    (each value's ``repr``) only when asked for."""
    out = session.as_dict()
    out["history"] = out["history"][-HISTORY_SHOWN:]
    if show_data:
        out["data"] = {str(k): _short_repr(v) for k, v in session.data.items()}
    return out


def _short_repr(value: object, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # an application object whose repr fails
        text = f"<repr failed: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


_END = object()


class ManagerSource:
    """The sessions of a :class:`~livekit_lifecycle.LifecycleManager` in this process.

    Listens to ``created`` and ``state_changed`` while someone iterates
    :meth:`changes`; never touches the manager otherwise.
    """

    def __init__(
        self, manager: LifecycleManager, *, show_data: bool = False, description: str = ""
    ) -> None:
        self._manager = manager
        self._show_data = show_data
        self._description = description
        self._room = ""
        self._queues: list[asyncio.Queue[object]] = []
        self._listening = False
        self._closed = False

    @property
    def description(self) -> str:
        return self._description or f"room {self._room_name() or '(not attached)'}, in-process"

    def _room_name(self) -> str:
        room = self._manager.room
        if room is not None and room.name:
            self._room = room.name  # kept: shutdown detaches the room
        return self._room

    async def snapshot(self) -> Snapshot:
        room = self._room_name()
        return {
            room: {
                key: session_dict(session, show_data=self._show_data)
                for key, session in list(self._manager.sessions.items())
            }
        }

    async def changes(self) -> AsyncIterator[Change]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._queues.append(queue)
        self._listen()
        try:
            while not self._closed:
                item = await queue.get()
                if item is _END:
                    return
                assert isinstance(item, Change)
                yield item
        finally:
            self._queues.remove(queue)
            if not self._queues:
                self._unlisten()

    async def aclose(self) -> None:
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(_END)

    def _listen(self) -> None:
        if not self._listening:
            self._manager.on("created", self._on_created)
            self._manager.on("state_changed", self._on_changed)
            self._listening = True

    def _unlisten(self) -> None:
        if self._listening:
            self._manager.off("created", self._on_created)
            self._manager.off("state_changed", self._on_changed)
            self._listening = False

    def _publish(self, change: Change) -> None:
        for queue in self._queues:
            queue.put_nowait(change)

    def _on_created(self, session: Session) -> None:
        self._publish(Change(self._room_name(), session_dict(session, show_data=self._show_data)))

    def _on_changed(self, session: Session, transition: Transition) -> None:
        data = session_dict(session, show_data=self._show_data)
        self._publish(Change(self._room_name(), data, transition.as_dict()))


class RoomSource:
    """A live room, joined as a hidden observer: the connection ``livekit-lifecycle watch`` makes.

    :meth:`start` connects (raising :class:`~livekit_lifecycle._watch.WatchError`
    on a bad URL, bad credentials or an unreachable server); the observer's own
    manager then feeds a :class:`ManagerSource`.
    """

    def __init__(self, settings: WatchSettings, *, show_data: bool = False) -> None:
        self._settings = settings
        self._show_data = show_data
        self._stop = asyncio.Event()
        self._watcher: Watcher | None = None
        self._task: asyncio.Task[int] | None = None
        self._inner: ManagerSource | None = None

    @property
    def description(self) -> str:
        return f"room {self._settings.room} at {self._settings.url} (live observer)"

    async def start(self) -> RoomSource:
        from livekit_lifecycle._watch import Watcher

        watcher = Watcher(self._settings, _SilentRenderer())
        self._watcher = watcher
        self._task = asyncio.get_running_loop().create_task(watcher.run(self._stop))
        ready = asyncio.ensure_future(watcher.ready.wait())
        try:
            await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not watcher.ready.is_set():
            await self._task  # raises the WatchError that ended it
            raise RuntimeError("the room observer ended before it was connected")
        assert watcher.manager is not None
        self._inner = ManagerSource(
            watcher.manager, show_data=self._show_data, description=self.description
        )
        return self

    def _source(self) -> ManagerSource:
        if self._inner is None:
            raise RuntimeError("RoomSource.start() has not completed")
        return self._inner

    async def snapshot(self) -> Snapshot:
        return await self._source().snapshot()

    def changes(self) -> AsyncIterator[Change]:
        return self._source().changes()

    @property
    def ended(self) -> asyncio.Future[int] | None:
        """Done when the observer left (the room closed, or :meth:`aclose`)."""
        return self._task

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class StoreSource:
    """Every room's sessions in a session store: the fleet view, across every worker.

    Reads the store's rooms index every ``interval`` seconds and re-reads only
    the rooms that changed since (a quiet fleet costs one command a poll), then
    turns what changed into :class:`Change` items: a record that is new or was
    rewritten (a later ``updated_at``), and a record that is gone (shown as
    ``removed``). The view lags each worker by its
    write-behind plus ``interval``. The store is the caller's: :meth:`aclose`
    stops polling and leaves the store open.

    A poll that fails (the store is down) ends :meth:`changes` with the error;
    the inspector shows it, takes a :meth:`snapshot` again when the store
    answers and calls :meth:`changes` again, which follows on from that latest
    snapshot (or from the last good poll): nothing that changed meanwhile is missed.
    """

    def __init__(
        self, store: SessionStore, *, interval: float = 0.5, show_data: bool = False
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self._store = store
        self._interval = interval
        self._show_data = show_data
        self._closed = asyncio.Event()
        self._baseline: tuple[dict[str, Any], Snapshot] | None = None
        """The rooms index and the view last read: where :meth:`changes` follows on from."""

    @property
    def description(self) -> str:
        return f"session store {self._store!r}, every worker"

    async def snapshot(self) -> Snapshot:
        index = dict(await self._store.rooms())
        seen = await self._read(sorted(index))
        self._baseline = (index, seen)
        return seen

    async def _read(self, rooms: list[str]) -> Snapshot:
        from livekit_lifecycle.stores._fleet import room_entries

        # The fleet view's reader: a RedisStore's room decoded and checked in one call.
        return {
            room: {key: self._row(entry) for key, entry in entries.items()}
            for room, entries in (await room_entries(self._store, rooms, time.time())).items()
        }

    def _row(self, record: dict[str, Any]) -> dict[str, Any]:
        # The page's row is Session.as_dict()'s shape: a record has no track sids.
        row = {name: value for name, value in record.items() if name != "data"}
        row["tracks"] = []
        row["history"] = list(record.get("history") or ())[-HISTORY_SHOWN:]
        if self._show_data:
            row["data"] = {str(k): _short_repr(v) for k, v in (record.get("data") or {}).items()}
        return row

    async def changes(self) -> AsyncIterator[Change]:
        if self._baseline is None:
            await self.snapshot()
        assert self._baseline is not None
        index, seen = self._baseline
        while not self._closed.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), self._interval)
                return
            except asyncio.TimeoutError:
                pass
            latest = dict(await self._store.rooms())
            changed = [room for room, at in latest.items() if index.get(room) != at]
            gone = [room for room in index if room not in latest]
            index = latest
            fresh = await self._read(changed)
            now = {room: seen.get(room, {}) for room in latest}
            now.update(fresh)
            for room, sessions in fresh.items():
                before = seen.get(room, {})
                for key, row in sessions.items():
                    old = before.get(key)
                    if old is None or old.get("updated_at") != row.get("updated_at"):
                        history = row["history"]
                        grew = history and (old is None or old["history"][-1:] != history[-1:])
                        yield Change(room, row, history[-1] if grew else None)
            for room in [*changed, *gone]:
                for key, row in seen.get(room, {}).items():
                    if key not in now.get(room, {}):
                        yield Change(room, {**row, "state": "removed"})
            seen = now
            self._baseline = (index, seen)

    async def aclose(self) -> None:
        self._closed.set()


class _SilentRenderer:
    """The watcher's renderer when the page shows everything: prints nothing."""

    def start(self, watcher: Watcher) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def changed(self, session: Session, transition: Transition | None) -> None:
        pass

    def stop(self, watcher: Watcher) -> None:
        pass
