"""A manager's sessions in a durable store: restore on attach, write-behind, cleanup claims.

Only built when ``config.store.durable``; with the default
:class:`~livekit_lifecycle.stores.MemoryStore` the manager holds ``None``
instead and does no store work at all. It is called at these seams:

- by the room intake, :meth:`Persistence.begin` where it would reconcile with
  the room: the first time (the room connected) the stored sessions are loaded
  and rebuilt first; room events that arrive meanwhile are held and replayed after;
- by the session runtime (:class:`~._runtime.SessionStoreSeam`):
  :meth:`Persistence.written` after every transition (and ``set_user_id``),
  :meth:`Persistence.data` for a session's ``data`` (whose every change is
  written behind);
- by the cleanup activity, :meth:`Persistence.claims` before the cleanup callbacks
  of the connections whose cleanup became due together: only the process that wins
  a connection's claim in the store runs them;
- by the façade, :meth:`Persistence.aclose` at the end of shutdown: a bounded flush.

It reaches the runtime only through its public methods (``restore``, ``feed``,
``merge_stored``...): it never writes a session's fields itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from livekit import rtc

from ._callbacks import Supervisor
from ._events import Input, InputKind
from ._log import ManagerLog
from .config import LifecycleConfig
from .session import Session, Transition
from .statechart import State
from .stores import Claim, SessionData, SessionRecord, SkippedRecord, process_owner
from .stores._protocol import log_skipped
from .stores._writer import STORE_STATS, StoreWriter

if TYPE_CHECKING:
    from ._cleanup import ClaimAnswer
    from ._intake import RoomIntake
    from ._runtime import SessionRuntime

__all__ = ["PERSISTENCE_STATS", "ConversationStore", "Persistence"]


class ConversationStore(Protocol):
    """What the livekit-agents integration (``_conversation``) may use of a durable store's
    side: the façade's ``_conversation_store()`` hands it over, nothing else of it."""

    @property
    def conversations(self) -> Mapping[str, dict[str, Any]]:
        """Session key -> the conversation stored with it (restored records' too)."""

    async def restored(self, timeout: float) -> None:
        """Wait (bounded) until the stored sessions are loaded and rebuilt."""

    def set_conversation(self, key: str, conversation: dict[str, Any]) -> None:
        """Write ``conversation`` with session ``key``'s record from now on."""


PERSISTENCE_STATS = (
    *STORE_STATS,
    "sessions_restored",
    "sessions_expired_while_away",
    "store_records_skipped",
    "store_restores_deferred",
    "store_claims_waited",
    "store_claims_taken_over",
)
"""The counters a durable store adds to ``LifecycleManager.stats``."""

_HOLD_FOR = 3.0
"""Seconds room events wait for the stored sessions before the manager goes on in memory."""
_LOAD_TIMEOUT = 5.0
"""Seconds one load may take before it is abandoned (and retried)."""
_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0
_PREPARE_TIMEOUT = 0.5
"""Seconds the claims of nothing at attach may take (a store's own; RedisStore answers at once)."""
_CLAIMS_PER_CALL = 500
"""Cleanups claimed in one call to the store, at most (RedisStore's script call holds 500)."""
_WAIT_FIRST = 0.05
"""Seconds before a claim held elsewhere is asked again: the holder's cleanup is usually
done (and written, 50 ms behind) within a few tens of milliseconds."""
_BOUND = (State.CONNECTING, State.ACTIVE, State.RECONNECTED)
_T = TypeVar("_T")

if sys.version_info >= (3, 11):

    async def _bounded(call: Awaitable[_T], timeout: float) -> _T:
        """``asyncio.wait_for`` without its task per call (every cleanup claims)."""
        async with asyncio.timeout(timeout):
            return await call

else:  # pragma: no cover (3.10)
    _bounded = asyncio.wait_for


class Persistence:
    """The store side of one :class:`~livekit_lifecycle.LifecycleManager` (see the module doc)."""

    def __init__(self, config: LifecycleConfig, log: ManagerLog, supervisor: Supervisor) -> None:
        self._config = config
        self._log = log
        self._stats = stats = log.stats
        self._supervisor = supervisor
        self._store = store = config.store
        self._runtime: SessionRuntime
        self._intake: RoomIntake
        self.owner = process_owner()
        """This manager's name in the store (``host:pid:nonce``): who wrote, who claimed."""
        for name in PERSISTENCE_STATS:
            stats.setdefault(name, 0)
        self.writer = StoreWriter(
            store,
            room=lambda: log.room_name(),
            render=self._render,
            live_keys=lambda: list(self._runtime.sessions),
            grace_period=config.grace_period,
            stats=stats,
        )
        self.conversations: dict[str, dict[str, Any]] = {}
        """Session key -> the conversation written with that session's record (the
        linked AgentSession's, kept by :mod:`._conversation`; restored records' too)."""
        self._restore_task: asyncio.Task[None] | None = None
        """Loads while room events are held: one of the manager's tracked tasks."""
        self._retry_task: asyncio.Task[None] | None = None
        """Retries the load after the hold, untracked (``idle()`` does not wait for it)."""
        self._interrupted: set[str] = set()
        """Restored sessions whose cleanup a dead process had claimed: claim() takes it over."""
        self._held: list[Callable[[], None]] | None = None
        self._restored = False
        self._seen: set[str] = set()
        """Keys of the sessions made in memory before the restore answered (merged then)."""
        self.hold_for = _HOLD_FOR
        """Seconds room events wait for the restore before the manager goes on in memory."""

    def bind(self, runtime: SessionRuntime, intake: RoomIntake) -> None:
        """The runtime and the intake this store's side works with (the façade wires them)."""
        self._runtime = runtime
        self._intake = intake
        self._rendered: dict[str, tuple[Transition, tuple[dict[str, Any], ...]]] = {}
        """Session key -> its newest transition and its history as dicts (see _history_of)."""

    # ------------------------------------------------------------------ restore

    @property
    def holding(self) -> bool:
        """True while the stored sessions are being loaded: room events wait (see :meth:`hold`)."""
        return self._held is not None

    def hold(self, replay: Callable[[], None]) -> None:
        """Keep a room event's handling until the restore is done."""
        assert self._held is not None
        self._held.append(replay)

    def begin(self) -> bool:
        """Start restoring the attached, connected room once; True while that is under way.

        The caller skips its reconcile then: the restore reconciles when it is done
        (or when it stops holding events and the manager goes on in memory).
        """
        if self._restored:
            return False
        if self._restore_task is None:
            room = self._intake.room
            if room is None or not room.isconnected() or not room.name:
                return False  # the name is only known once connected: wait for that
            self._held = []
            self._restore_task = asyncio.get_running_loop().create_task(
                self._restore(), name="livekit-lifecycle:restore"
            )
            self._supervisor.track(self._restore_task)
        return self._held is not None

    async def restored(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the stored sessions are loaded and rebuilt,
        or until the manager stopped holding events and went on in memory."""
        if self._restore_task is None and not self._restored:
            await asyncio.sleep(0)  # an adoption deferred to the loop's next turn starts it
        task = self._restore_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout)

    async def _restore(self) -> None:
        """Load the room's records while room events are held (at most ``hold_for`` s).

        A tracked task (``idle()`` and shutdown wait for it): it ends when the
        records are rebuilt, or when the hold ends with the store still silent.
        Then the manager goes on in memory (:meth:`_go_on_in_memory`) and an
        untracked task (:meth:`_retry`) goes on retrying the load; what it finally
        reads is merged (:meth:`_merge`).
        """
        runtime = self._runtime
        room = self._log.room_name() or ""
        loop = asyncio.get_running_loop()
        try:
            # Claims of nothing: the store gets ready for this room's claims now, not
            # while the first cleanups of a burst wait (RedisStore: lease, connections).
            await _bounded(self._store.claim_many(room, self.owner, []), _PREPARE_TIMEOUT)
        except asyncio.CancelledError:
            self._held = None
            raise
        except Exception:  # a store that is down says so at the load
            pass
        load = _Load(self, room)
        try:
            records = await load.until(loop.time() + self.hold_for)
        except asyncio.CancelledError:
            self._held = None
            load.abandon()
            raise
        if records is None:
            self._go_on_in_memory(room, load.why)
            if not runtime.closing:
                self._retry_task = loop.create_task(
                    self._retry(load), name="livekit-lifecycle:restore-retry"
                )
            return
        held, self._held = self._held or [], None
        self._loaded(room, records, merge=False)
        if runtime.closing:
            return
        self._intake.reconcile()
        for replay in held:
            replay()

    async def _retry(self, load: _Load) -> None:
        """The load retried in the background (backoff up to 5 s) until the store answers.

        Not one of the manager's tracked tasks: ``idle()`` does not wait for a store
        that is down. Cancelled and awaited by :meth:`aclose`.
        """
        try:
            records = await load.until(None)
        except asyncio.CancelledError:
            load.abandon()
            raise
        assert records is not None
        self._loaded(load.room, records, merge=True)

    def _loaded(self, room: str, records: list[SessionRecord], *, merge: bool) -> None:
        """The store answered: rebuild (or merge) the sessions, then start writing."""
        self.writer.succeeded()
        self._restored = True
        if self._runtime.closing:
            return
        try:
            if merge:
                self._merge(records)
            else:
                self._rebuild(records)
        except Exception:
            self._stats["internal_errors"] += 1
            self._log.log.error("store.restore_failed", category="store", room=room, exc_info=True)
        self.writer.start()

    def _go_on_in_memory(self, room: str, why: str) -> None:
        """Stop holding events: the manager works in memory until the store answers.

        Nothing is written meanwhile (the writer starts after the merge), so the
        stored sessions of users this manager has not seen are never overwritten.
        """
        held, self._held = self._held or [], None
        self._stats["store_restores_deferred"] += 1
        self._log.log.warning(
            "store.restore_deferred",
            category="store",
            room=room,
            store=repr(self._store),
            held_for=self.hold_for,
            held_events=len(held),
            error=why,
        )
        if self._runtime.closing:
            return
        self._intake.reconcile()
        for replay in held:
            replay()

    def _merge(self, records: list[SessionRecord]) -> None:
        """Records read after the manager went on in memory, merged into what it has.

        A key it never saw is restored as usual. A key it saw meanwhile keeps its
        live session (state, connection, counters), which takes the stored
        ``user_id`` when it has none and every stored ``data`` key it has not set;
        a key it saw and has removed since is deleted from the store.
        """
        runtime = self._runtime
        unseen = []
        for record in records:
            session = runtime.sessions.get(record.key)
            if record.key not in self._seen:
                unseen.append(record)
            elif session is None or record.state == State.REMOVED.value:
                self.writer.mark(record.key, stored=True)  # gone here: deleted there
            else:
                runtime.merge_stored(session, record.user_id, record.data)
                if record.conversation is not None:
                    self.conversations.setdefault(record.key, record.conversation)
                self.writer.mark(record.key, stored=True)
                self._log.session(
                    logging.INFO,
                    "session.merged",
                    "session",
                    session,
                    user_id=session.user_id,
                    stored_state=record.state,
                    stored_sid=record.sid,
                    written_by=record.owner,
                )
        self._seen.clear()
        self._rebuild(unseen)

    def _rebuild(self, records: list[SessionRecord]) -> None:
        """Sessions as the records left them, then brought in line with who is in the room.

        Each is registered in the chart's initial state, then every one is fed the
        chart's ``restored`` input, whose edges take it where its record left it: its
        grace window goes on, its connection (still in the room) is bound again, or
        its connection is cleaned (it ended while no process watched, or during a
        cleanup a dead process had claimed).
        """
        runtime, intake = self._runtime, self._intake
        room = intake.room
        present = {p.sid: p for p in room.remote_participants.values()} if room else {}
        now = time.time()
        restored: list[tuple[Session, Input]] = []
        for record in sorted(records, key=lambda r: r.key):
            if record.room != (self._log.room_name() or ""):
                # parse_record checks the room a store read it under; a store that
                # does not say where it read it is checked here.
                self._skipped(SkippedRecord(record.key, record.room, record.key, "another room's"))
                continue
            try:
                self._rebuild_one(record, present, now, restored)
            except Exception as exc:  # one record, never the room (nor the held events)
                reason = f"{type(exc).__name__}: {exc}"
                self._skipped(SkippedRecord(record.key, record.room, record.key, reason))
        for session, inp in restored:
            runtime.enter_restored(session, inp)
        for participant in present.values():
            if participant.sid in runtime.by_sid or participant.kind not in self._config.kinds:
                continue
            key = intake.key_of(InputKind.CONNECTED, participant)
            if key is not None and key in runtime.sessions:
                intake.submit(InputKind.CONNECTED, participant)  # back on a new connection

    def _rebuild_one(
        self,
        record: SessionRecord,
        present: dict[str, rtc.RemoteParticipant],
        now: float,
        restored: list[tuple[Session, Input]],
    ) -> None:
        runtime = self._runtime
        config = self._config
        state = State(record.state)
        if record.key in runtime.sessions or state is State.REMOVED:
            self.writer.mark(record.key, stored=True)  # ours now (or gone): rewritten or deleted
            return
        if record.sid in runtime.by_sid:
            raise ValueError(f"its sid {record.sid!r} is another restored session's")
        # Everything that can fail comes before the session is registered: a record
        # that fails leaves nothing behind.
        history = []
        for raw in record.history:
            try:
                history.append(Transition.from_dict(raw))
            except ValueError:
                continue
        grace_remaining: float | None = None
        participant = None
        cleaned = False
        if state in _BOUND:
            participant = present.get(record.sid)  # None: it left while no process watched
        elif state is not State.DISCONNECTING:  # grace (or cleaned, never written)
            cleaned = True
            deadline = record.grace_deadline
            if deadline is None:
                deadline = (record.disconnected_at or now) + config.grace_period
            # Never longer than a window this manager would open: a deadline from a
            # clock far ahead (or a record edited by hand) cannot pin a session for years.
            grace_remaining = min(max(deadline - now, 0.0), config.grace_period)
            if grace_remaining == 0.0:
                self._stats["sessions_expired_while_away"] += 1
        session = runtime.restore(
            record.key,
            identity=record.identity,
            sid=record.sid,
            fields={
                "user_id": record.user_id,
                "reconnects": record.reconnects,
                "cleanups": record.cleanups,
                "connected_at": record.connected_at,
                "disconnected_at": record.disconnected_at,
            },
            history=history,
            data=dict(record.data),
            delay=grace_remaining,
        )
        if state is State.DISCONNECTING or (state in _BOUND and participant is None):
            # Its process died during the cleanup, or it left while no process watched
            # and its process may have won the claim and died before its record said so
            # (writes are behind): a claim held by a dead lease is taken over once that
            # lease has expired (claim() waits for it), and the callbacks run here with
            # `session.cleanup_claim.retry`, unless the cleanup was done; a free claim is
            # won at once.
            self._interrupted.add(record.key)
        if record.conversation is not None:
            self.conversations[record.key] = record.conversation
        self.writer.mark(session.key, stored=True)  # restored: its record is there
        restored.append(
            (
                session,
                Input(
                    InputKind.RESTORED,
                    record.key,
                    sid=record.sid,
                    participant=participant,
                    cleaned=cleaned,
                ),
            )
        )
        self._stats["sessions_restored"] += 1
        self._log.session(
            logging.INFO,
            "session.restored",
            "session",
            session,
            user_id=session.user_id,
            stored_state=record.state,
            written_by=record.owner,
            grace_remaining=None if grace_remaining is None else round(grace_remaining, 3),
        )

    def _skipped(self, skip: SkippedRecord) -> None:
        """A stored record not restored: one log line, counted (the room's others are)."""
        self._stats["store_records_skipped"] += 1
        log_skipped(self._log.log, skip)

    def data(self, key: str, data: dict[str, Any]) -> dict[str, Any]:
        """A checked ``data`` for session ``key`` whose every change is written behind."""
        if not self._restored:
            self._seen.add(key)  # made in memory: merged when the store answers
        return SessionData.observed(functools.partial(self.writer.mark, key), data)

    # ------------------------------------------------------------------ write-behind

    def written(self, session: Session) -> None:
        """``session`` changed: write it behind the event path."""
        state = session._state
        if state is State.CLEANED:
            # The cleanup of this connection ended (run here, or elsewhere): the next
            # write says so, and the store marks its claim done for a manager that lost
            # the claim and waits (a record alone may be overwritten by that manager's
            # own older view of the connection).
            self.writer.mark(session._key, cleaned=session._sid)
        elif state is State.REMOVED:
            self._forget(session._key)
            self.writer.gone(session._key)
        else:
            self.writer.changed(session._key)

    def set_conversation(self, key: str, conversation: dict[str, Any]) -> None:
        """Write ``conversation`` (JSON) with session ``key``'s record from now on."""
        self.conversations[key] = conversation
        self.writer.mark(key)

    def _render(self, key: str) -> SessionRecord | None:
        runtime = self._runtime
        session = runtime.sessions.get(key)
        if session is None or session.state is State.REMOVED:
            self._forget(key)
            return None
        return SessionRecord(
            room=self._log.room_name() or "",
            key=key,
            state=session.state.value,
            identity=session.identity,
            sid=session.sid,
            user_id=session.user_id,
            data=dict(session.data),
            reconnects=session.reconnects,
            cleanups=session.cleanups,
            connected_at=session.connected_at,
            disconnected_at=session.disconnected_at,
            grace_deadline=runtime.timer_deadline(session),
            history=self._history_of(key, session.history),
            owner=self.owner,
            conversation=self.conversations.get(key),
        )

    def _forget(self, key: str) -> None:
        """What this side keeps of session ``key`` for its writes, let go (it is gone)."""
        self.conversations.pop(key, None)
        self._rendered.pop(key, None)

    def _history_of(self, key: str, history: Sequence[Transition]) -> tuple[dict[str, Any], ...]:
        """``history`` as dicts, each transition converted once: a write of a session
        with a long history costs its new transitions, not the whole history again."""
        if not history:
            self._rendered.pop(key, None)
            return ()
        last = history[-1]
        cached = self._rendered.get(key)
        if cached is not None and cached[0] is last and len(cached[1]) == len(history):
            return cached[1]
        dicts: tuple[dict[str, Any], ...] | None = None
        if cached is not None:
            # Transitions are immutable and only ever appended (the oldest dropped):
            # the cached dicts end at the one whose transition is cached[0].
            for index in range(len(history) - 1, -1, -1):
                if history[index] is cached[0]:
                    known = cached[1][len(cached[1]) - index - 1 :]
                    dicts = known + tuple(t.as_dict() for t in history[index + 1 :])
                    break
        if dicts is None or len(dicts) != len(history):
            dicts = tuple(t.as_dict() for t in history)
        self._rendered[key] = (last, dicts)
        return dicts

    # ------------------------------------------------------------------ claims

    async def claims(self, sessions: Sequence[Session], answer: ClaimAnswer) -> None:
        """Whether this process runs the cleanup of each session's current connection,
        and the claim it won (``None`` when the store did not answer): ``answer`` is
        called once per session. The sessions due together are claimed together, one
        call to the store; a restored session whose cleanup a dead process had
        claimed, and a claim lost to another process that has not finished that
        cleanup, wait in a task of their own (:meth:`_take_over`), answered later."""
        room = self._log.room_name() or ""
        # Bounded like a cleanup callback (cleanup_timeout, and the shutdown deadline).
        timeout = max(self._supervisor.callback_timeout(), 0.1)
        interrupted = self._interrupted
        batch = [s for s in sessions if s.key not in interrupted] if interrupted else sessions
        # A backlog is asked for in parts (a store's one call stays one call: RedisStore's
        # script call holds 500), sent together: each waits one round trip.
        parts = [batch[i : i + _CLAIMS_PER_CALL] for i in range(0, len(batch), _CLAIMS_PER_CALL)]
        if len(parts) == 1:
            await self._claim_part(room, parts[0], timeout, answer)
        elif parts:
            await asyncio.gather(*(self._claim_part(room, p, timeout, answer) for p in parts))
        if len(batch) < len(sessions):
            loop = asyncio.get_running_loop()
            for session in sessions:
                if session.key in interrupted:
                    # A task of its own (rare: restored after a crash): its wait for the
                    # dead lease must not hold up the batches after this one.
                    self._supervisor.track(
                        loop.create_task(self._claim_alone(room, session, timeout, answer))
                    )

    async def _claim_part(
        self, room: str, part: Sequence[Session], timeout: float, answer: ClaimAnswer
    ) -> None:
        try:
            claims = await _bounded(
                self._store.claim_many(room, self.owner, [(s.key, s.sid) for s in part]),
                timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unverified(part, exc, answer)
            return
        self.writer.succeeded()
        for session, claim in zip(part, claims, strict=True):
            if self._runs_elsewhere(claim):
                # Its cleanup runs in another process, which may die before it
                # finishes: wait (in a task: the others of the batch go on).
                self._supervisor.track(
                    asyncio.get_running_loop().create_task(
                        self._wait_elsewhere(room, session, claim, timeout, answer)
                    )
                )
                continue
            answer(session, self._claimed(session, claim), claim if claim.won else None)

    async def _claim_alone(
        self, room: str, session: Session, timeout: float, answer: ClaimAnswer
    ) -> None:
        try:
            claim = await _bounded(
                self._store.claim(room, session.key, session.sid, self.owner), timeout
            )
            self._interrupted.discard(session.key)
            claim = await self._take_over(room, session, claim, timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unverified([session], exc, answer)
            return
        self.writer.succeeded()
        answer(session, self._claimed(session, claim), claim if claim.won else None)

    async def _wait_elsewhere(
        self, room: str, session: Session, claim: Claim, timeout: float, answer: ClaimAnswer
    ) -> None:
        claim = await self._take_over(room, session, claim, timeout)
        answer(session, self._claimed(session, claim), claim if claim.won else None)

    def _unverified(self, sessions: Sequence[Session], exc: Exception, answer: ClaimAnswer) -> None:
        # Availability first: an unverified cleanup runs here (docs/stores.md).
        self.writer.failed("claim", exc)
        for session in sessions:
            self._stats["store_claims_unverified"] += 1
            self._log.session(
                logging.WARNING, "cleanup.claim_unverified", "cleanup", session, owner=self.owner
            )
            answer(session, True, None)

    def _claimed(self, session: Session, claim: Claim) -> bool:
        """Log ``claim``'s verdict; True when the cleanup runs here."""
        if claim.won:
            if not self._log.enabled(logging.INFO):
                return True
            self._log.session(
                logging.INFO,
                "cleanup.claimed",
                "cleanup",
                session,
                owner=self.owner,
                token=claim.token,
                retry=claim.retry,
            )
            return True
        self._stats["store_claims_lost"] += 1
        self._log.session(
            logging.INFO,
            "cleanup.claimed_elsewhere",
            "cleanup",
            session,
            owner=self.owner,
            winner=claim.owner,
            token=claim.token,
            done=claim.done,
        )
        return False

    def _runs_elsewhere(self, claim: Claim) -> bool:
        """A claim lost to another process's lease whose cleanup is not written as done:
        that cleanup runs there, or was interrupted by that process's death (taken over
        here once its lease expired). A store without leases (``lease`` empty) keeps
        at-most-once: the loser moves on at once. So does a claim held under this
        process's own lease (another manager of this process): it dies with us."""
        if claim.won or claim.done or not claim.lease:
            return False
        return claim.lease != getattr(self._store, "lease", None)

    async def _take_over(self, room: str, session: Session, claim: Claim, timeout: float) -> Claim:
        """Wait while ``claim`` is held elsewhere: until its cleanup is written as done
        (the holder finished: nothing runs here), or the holder's lease expired (the
        store hands the claim over: won, ``retry``, a higher token: the callbacks run
        here). For a restored session whose process died mid-cleanup, and for a live
        manager that lost the claim to a process that may die before it finishes.

        Asked again after 50 ms, then twice as long each time up to a quarter of the
        lease TTL. Bounded by the lease TTL plus ``timeout`` (the holder's lease expires
        within the TTL of its death; a live holder's callbacks are bounded by the
        cleanup timeout) and by the shutdown's deadline: a holder that is alive and not
        done by then keeps the cleanup (at most once), the session here moves on. A
        store that fails meanwhile is asked again: the last answer stands at the end.
        """
        if claim.won or claim.done or not claim.lease:
            return claim
        supervisor = self._supervisor
        lease_ttl = float(getattr(self._store, "lease_ttl", 0.0))
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + lease_ttl + timeout
        holder = claim.owner
        self._stats["store_claims_waited"] += 1
        self._log.session(
            logging.INFO,
            "cleanup.claim_waiting",
            "cleanup",
            session,
            owner=self.owner,
            holder=holder,
            holder_lease=claim.lease,
            token=claim.token,
            wait_at_most=round(deadline - started, 3),
        )
        wait = _WAIT_FIRST
        while True:
            now = loop.time()
            # The shutdown's deadline cuts the wait (callback_timeout() is 0 past it).
            until = min(deadline, now + supervisor.callback_timeout())
            if supervisor.cancelling or now + wait > until:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, max(lease_ttl / 4, _WAIT_FIRST))
            try:
                claim = await _bounded(
                    self._store.claim(room, session.key, session.sid, self.owner),
                    max(min(timeout, until - loop.time()), 0.05),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.writer.failed("claim", exc)
                continue
            self.writer.succeeded()
            if claim.won or claim.done or not claim.lease:
                break
        waited = round(loop.time() - started, 3)
        if claim.won:
            self._stats["store_claims_taken_over"] += int(claim.retry)
            self._log.session(
                logging.WARNING,
                "cleanup.claim_taken_over",
                "cleanup",
                session,
                owner=self.owner,
                holder=holder,
                token=claim.token,
                retry=claim.retry,
                waited=waited,
            )
        elif not claim.done:
            self._log.session(
                logging.WARNING,
                "cleanup.claim_wait_ended",
                "cleanup",
                session,
                owner=self.owner,
                holder=claim.owner,
                token=claim.token,
                waited=waited,
                shutdown=supervisor.deadline is not None,
            )
        return claim

    # ------------------------------------------------------------------ shutdown

    def stop_restoring(self) -> None:
        """Shutdown began: a restore still loading is abandoned (held events with it)."""
        for task in (self._restore_task, self._retry_task):
            if task is not None and not task.done():
                task.cancel()

    async def aclose(self, timeout: float) -> None:
        """Write what is left (at most ``timeout`` s), then stop the writer."""
        self.stop_restoring()
        retry, self._retry_task = self._retry_task, None
        if retry is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await retry
        flushed = await self.writer.aclose(timeout)
        if not flushed:
            self._log.warning("store.flush_incomplete", "store", store=repr(self._store))


class _Load:
    """The room's load, attempted until the store answers, with backoff.

    One attempt is in flight at a time; an attempt still running when the hold
    ends is kept, not restarted (a slow store's late answer is merged). One that
    has not answered in ``_LOAD_TIMEOUT`` s is abandoned (its answer, if it ever
    comes, is dropped): a client slow to honour a cancellation stretches nothing.
    """

    def __init__(self, persistence: Persistence, room: str) -> None:
        self._persistence = persistence
        self.room = room
        self.why = "the store has not answered"
        """The last failure, for the log line of the hold's end."""
        self._attempt: asyncio.Task[list[SessionRecord]] | None = None
        self._give_up_at = 0.0
        self._retry = _RETRY_FIRST

    async def until(self, deadline: float | None) -> list[SessionRecord] | None:
        """The records; None when ``deadline`` (loop time; None: never) passes first."""
        loop = asyncio.get_running_loop()
        persistence = self._persistence
        while True:
            if self._attempt is None:
                self._attempt = loop.create_task(
                    persistence._store.load(self.room, skipped=persistence._skipped)
                )
                self._attempt.add_done_callback(_retrieve)
                self._give_up_at = loop.time() + _LOAD_TIMEOUT
            attempt = self._attempt
            held_up = deadline is not None and deadline < self._give_up_at
            until = deadline if held_up and deadline is not None else self._give_up_at
            await asyncio.wait({attempt}, timeout=max(until - loop.time(), 0.0))
            if not attempt.done():
                if held_up:
                    return None  # still loading: the caller goes on, the attempt too
                attempt.cancel()
                error: BaseException = TimeoutError(f"no answer in {_LOAD_TIMEOUT:g} s")
            elif attempt.cancelled():
                error = asyncio.CancelledError("the load was cancelled")
            elif (failure := attempt.exception()) is not None:
                error = failure
            else:
                self._attempt = None
                return attempt.result()
            self._attempt = None
            persistence.writer.failed("load", error)
            self.why = f"{type(error).__name__}: {error}"
            wait, self._retry = self._retry, min(self._retry * 2, _RETRY_MAX)
            if deadline is not None:
                wait = min(wait, max(deadline - loop.time(), 0.0))
            await asyncio.sleep(wait)
            if deadline is not None and loop.time() >= deadline:
                return None

    def abandon(self) -> None:
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None


def _retrieve(task: asyncio.Task[list[SessionRecord]]) -> None:
    # An abandoned load's error is not news (the outage is logged): retrieved, not reported.
    if not task.cancelled():
        task.exception()
