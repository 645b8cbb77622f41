"""livekit-agents integration: one call per job makes the agent session survive a browser refresh.

Needs the ``agents`` extra (``pip install 'livekit-lifecycle[agents]'``); this is
the only module of the package that imports ``livekit.agents``.

::

    manager = await for_job(ctx, session=agent_session, config=config)
    await manager.start_session(Assistant())   # RoomIO with close_on_disconnect=False

What it does for a job (see ``docs/agents.md``):

- connects the job (``ctx.connect()``, a no-op when already connected) and
  attaches to ``ctx.room``, so participants already in the room get sessions:
  on the event loop's next turn, never before ``for_job`` returns, so listeners
  registered right after it see every notification (the first user's too);
- registers ``aclose()`` with ``ctx.add_shutdown_callback``; resources given
  to it (a TTS, an HTTP session) are closed there, once, last given first;
- with an ``AgentSession``: RoomIO re-links the same identity by itself after
  a refresh; when the user comes back inside the grace window under a
  *different* identity mapped to the same session key, the integration
  re-links RoomIO to the new connection; when the linked user's session is
  ``removed`` (window expired, ``PARTICIPANT_REMOVED``, ``ROOM_DELETED``...)
  the ``AgentSession`` is closed, once;
- with a durable store (``LifecycleConfig(store=RedisStore(...))``): the
  AgentSession's conversation is written with its user's session, and a new
  job that restores that session gives it back before the AgentSession starts
  (:meth:`JobLifecycleManager.start_session`, or
  :meth:`JobLifecycleManager.restore_conversation` when you start it yourself).

RoomIO closes the ``AgentSession`` itself when the linked participant leaves
with ``CLIENT_INITIATED`` (what a refresh sends) unless it was started with
``close_on_disconnect=False``: start it with :meth:`JobLifecycleManager.start_session`
or pass :func:`refresh_safe_room_options` to ``AgentSession.start``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, get_args, overload

from livekit import rtc
from livekit.agents import Agent, AgentSession, CloseEvent, CloseReason, JobContext
from livekit.agents.voice.room_io import RoomIO, RoomOptions

from ._conversation import ConversationKeeper
from ._emitter import Listener, NotificationName
from ._intake import session_key
from ._view import InternalView
from .config import LifecycleConfig
from .log import LOGGER_NAME, get_logger
from .manager import LifecycleManager
from .session import Session, Transition, reason_name
from .statechart import State

__all__ = ["JobLifecycleManager", "WhenEmpty", "for_job", "refresh_safe_room_options"]

F = TypeVar("F", bound=Callable[..., Any])

WhenEmpty = Literal["shutdown", "delete_room", "keep"]
"""What a job does once its last user's session is removed: see :func:`for_job`."""

DEFAULT_SHUTDOWN_BUDGET = 10.0
"""livekit-agents' default ``shutdown_process_timeout`` (``AgentServer``/``WorkerOptions``)."""

_BUDGET_RESERVE = 2.0
"""Seconds of the worker's budget left to livekit-agents: what runs before the shutdown
callbacks (the AgentSession's close, the room's disconnect) and the process's exit."""

_RESOURCE_FLOOR = 1.0
"""Seconds each resource may still take once the shutdown deadline has passed (manager.py)."""

_JOB_CLEANUP_TIMEOUT = 5.0
"""``cleanup_timeout`` of the configuration ``for_job`` makes when it is given none."""


def refresh_safe_room_options(options: RoomOptions | None = None) -> RoomOptions:
    """A copy of ``options`` (default ``RoomOptions()``) with ``close_on_disconnect=False``.

    Pass it to ``AgentSession.start(room_options=...)`` when you start the
    session yourself. Every other option is kept as given.
    """
    if options is None:
        return RoomOptions(close_on_disconnect=False)
    if not isinstance(options, RoomOptions):
        raise TypeError(f"options must be a RoomOptions, got {type(options).__name__}")
    return dataclasses.replace(options, close_on_disconnect=False)


async def for_job(
    ctx: JobContext,
    *,
    session: AgentSession[Any] | None = None,
    config: LifecycleConfig | None = None,
    resources: Iterable[object] = (),
    when_empty: WhenEmpty = "shutdown",
    shutdown_budget: float = DEFAULT_SHUTDOWN_BUDGET,
) -> JobLifecycleManager:
    """Connect the job if needed and return a :class:`JobLifecycleManager` attached to its room.

    Call it in the entrypoint
    before ``AgentSession.start`` (or use :meth:`JobLifecycleManager.start_session`).

    Args:
        ctx: The job's context.
        session: The job's ``AgentSession``, started or not yet. When given,
            it is kept linked to its user across refreshes and closed when
            that user's session is removed.
        config: The lifecycle configuration (``grace_period``, ``session_key``...).
            Default: ``LifecycleConfig(cleanup_timeout=5.0)``, which fits the
            default shutdown budget.
        resources: Closed at job shutdown, after every session, last first
            (objects with ``aclose()``/``close()``, or callables). ``None``
            entries are skipped, so an optional TTS can be passed as is.
        when_empty: What happens once the last user's session is removed
            (the window expired, or the server removed them): ``"shutdown"``
            (the default) ends the job with ``ctx.shutdown()``; ``"delete_room"``
            deletes the room first (every other participant is disconnected);
            ``"keep"`` leaves the job running, as livekit-agents does by itself.
        shutdown_budget: The worker's ``shutdown_process_timeout`` (10 s unless
            you gave ``AgentServer`` another): the manager's shutdown is fitted
            inside it, and a configuration that cannot fit is reported now
            (``agents.shutdown_budget_exceeded``).

    Raises:
        TypeError: for a ``ctx`` that is not a ``JobContext``, a ``session``
            that is not an ``AgentSession``, or a resource that cannot be closed.
        ValueError: for an unknown ``when_empty`` or a ``shutdown_budget`` that
            is not a positive number.
    """
    if not isinstance(ctx, JobContext):
        raise TypeError(f"ctx must be a livekit.agents.JobContext, got {type(ctx).__name__}")
    # Room.connect() fills room.remote_participants without emitting
    # participant_connected: attaching after the connection is what lets the
    # manager adopt users who were already waiting in the room.
    await ctx.connect()
    return JobLifecycleManager(
        ctx,
        session=session,
        config=config,
        resources=resources,
        when_empty=when_empty,
        shutdown_budget=shutdown_budget,
    )


class JobLifecycleManager:
    """A :class:`LifecycleManager` bound to a livekit-agents job and, optionally, its AgentSession.

    Create it with :func:`for_job`. It wraps a manager (:attr:`manager`, for
    the functions that take one: ``enable_metrics(job.manager)``...) and
    offers its API as is (``add_cleanup``, ``on``, ``get``, ``sessions``,
    ``wait_for``, ``aclose``...); on top of it:

    - :attr:`linked_session` is the lifecycle :class:`Session` of the user the
      AgentSession's RoomIO is linked to, so agent code reaches that user's
      ``user_id`` and ``data`` (kept across refreshes) in one step;
    - :meth:`start_session` starts the AgentSession refresh-safe.

    Only the manager's public API and notifications are used: the
    integration listens to ``created``, ``state_changed``, ``reconnected``
    and ``removed`` and to the AgentSession's ``close`` event.
    """

    def __init__(
        self,
        ctx: JobContext,
        *,
        session: AgentSession[Any] | None = None,
        config: LifecycleConfig | None = None,
        resources: Iterable[object] = (),
        when_empty: WhenEmpty = "shutdown",
        shutdown_budget: float = DEFAULT_SHUTDOWN_BUDGET,
    ) -> None:
        """Wire everything at once; prefer :func:`for_job`, which connects the job first.

        Attaching before the job is connected misses the participants that
        were already in the room when it connects.
        """
        if not isinstance(ctx, JobContext):
            raise TypeError(f"ctx must be a livekit.agents.JobContext, got {type(ctx).__name__}")
        if session is not None and not isinstance(session, AgentSession):
            raise TypeError(
                f"session must be a livekit.agents.AgentSession, got {type(session).__name__}"
            )
        if when_empty not in get_args(WhenEmpty):
            raise ValueError(
                f"when_empty must be one of {', '.join(get_args(WhenEmpty))}, got {when_empty!r}"
            )
        if (
            isinstance(shutdown_budget, bool)
            or not isinstance(shutdown_budget, (int, float))
            or not shutdown_budget > 0
        ):
            raise ValueError(
                f"shutdown_budget must be a positive number of seconds, got {shutdown_budget!r}"
            )
        self._manager = manager = LifecycleManager(
            config or LifecycleConfig(cleanup_timeout=_JOB_CLEANUP_TIMEOUT)
        )
        manager._set_shutdown_limit(self._shutdown_limit)
        self._job = ctx
        self._when_empty: WhenEmpty = when_empty
        self._shutdown_budget = float(shutdown_budget)
        self._ending = False
        self._end_task: asyncio.Task[None] | None = None
        self._agent_session = session
        self._linked_key: str | None = None
        self._linked_identity: str | None = None
        self._agent_closed = False
        self._agent_close_task: asyncio.Task[None] | None = None
        self._job_log = get_logger()
        self._job_stdlog = logging.getLogger(LOGGER_NAME)
        for resource in resources:
            if resource is not None:
                self.add_resource(resource)
        if session is not None:
            self.on("created", self._on_created)
            self.on("state_changed", self._on_state_changed)
            self.on("reconnected", self._on_reconnected)
            self.on("removed", self._on_removed)
            session.on("close", self._on_agent_session_close)
            # Extra chances to see which participant RoomIO linked, for
            # sessions started before this manager existed.
            session.on("agent_state_changed", self._on_agent_activity)
            session.on("user_state_changed", self._on_agent_activity)
            # Ahead of RoomIO's own handler when the manager exists before
            # the AgentSession starts, so the link is seen before RoomIO drops it.
            ctx.room.on("participant_disconnected", self._on_room_participant_disconnected)
        self.on("removed", self._on_any_removed)
        self._conversation: ConversationKeeper | None = None
        store = manager._conversation_store()  # None with a MemoryStore
        if session is not None and store is not None:
            self._conversation = ConversationKeeper(self, store, session)
        ctx.add_shutdown_callback(self._on_job_shutdown)
        self._check_departure_timeout()
        self._check_shutdown_budget()
        # Users already in the room (with automatic dispatch the first user is
        # always there: their join created the room and the job) are adopted on
        # the loop's next turn, so listeners registered right after for_job
        # returns see their `created` and every other notification.
        manager.attach(ctx.room, adopt_later=True)
        self._observe_link()

    # ------------------------------------------------------------------ public API

    @property
    def manager(self) -> LifecycleManager:
        """The :class:`LifecycleManager` this job's integration wraps."""
        return self._manager

    @property
    def config(self) -> LifecycleConfig:
        """The manager's configuration (``shutdown_timeout`` fitted at shutdown)."""
        return self._manager.config

    @property
    def room(self) -> rtc.Room | None:
        """The job's room while the manager is attached to it."""
        return self._manager.room

    @property
    def closed(self) -> bool:
        """True once the manager's shutdown has started."""
        return self._manager.closed

    @property
    def sessions(self) -> Mapping[str, Session]:
        """See :attr:`LifecycleManager.sessions`."""
        return self._manager.sessions

    @property
    def stats(self) -> dict[str, int]:
        """See :attr:`LifecycleManager.stats`."""
        return self._manager.stats

    def get(self, key: str) -> Session | None:
        """See :meth:`LifecycleManager.get`."""
        return self._manager.get(key)

    def by_sid(self, sid: str) -> Session | None:
        """See :meth:`LifecycleManager.by_sid`."""
        return self._manager.by_sid(sid)

    def state_of(self, key: str) -> State | None:
        """See :meth:`LifecycleManager.state_of`."""
        return self._manager.state_of(key)

    def snapshot(self) -> dict[str, Any]:
        """See :meth:`LifecycleManager.snapshot`."""
        return self._manager.snapshot()

    def set_user_id(self, key_or_sid: str, user_id: str | None) -> Session:
        """See :meth:`LifecycleManager.set_user_id`."""
        return self._manager.set_user_id(key_or_sid, user_id)

    def add_cleanup(self, fn: F) -> F:
        """See :meth:`LifecycleManager.add_cleanup`."""
        return self._manager.add_cleanup(fn)

    def add_resource(self, resource: object, name: str | None = None) -> None:
        """See :meth:`LifecycleManager.add_resource`."""
        self._manager.add_resource(resource, name)

    @overload
    def on(self, event: NotificationName, callback: None = None) -> Callable[[F], F]: ...
    @overload
    def on(self, event: NotificationName, callback: F) -> F: ...
    def on(self, event: NotificationName, callback: Listener | None = None) -> Any:
        """See :meth:`LifecycleManager.on`."""
        return self._manager.on(event, callback)

    def once(self, event: NotificationName, callback: Listener) -> Listener:
        """See :meth:`LifecycleManager.once`."""
        return self._manager.once(event, callback)

    def off(self, event: NotificationName, callback: Listener) -> None:
        """See :meth:`LifecycleManager.off`."""
        self._manager.off(event, callback)

    async def wait_for(self, key: str, state: State | str, timeout: float | None = None) -> Session:
        """See :meth:`LifecycleManager.wait_for`."""
        return await self._manager.wait_for(key, state, timeout)

    async def idle(self) -> None:
        """See :meth:`LifecycleManager.idle`."""
        await self._manager.idle()

    async def aclose(self) -> None:
        """The manager's graceful shutdown, fitted in :attr:`shutdown_budget`."""
        await self._manager.aclose()

    async def __aenter__(self) -> JobLifecycleManager:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    @property
    def job(self) -> JobContext:
        """The job this manager belongs to."""
        return self._job

    @property
    def agent_session(self) -> AgentSession[Any] | None:
        """The AgentSession given to :func:`for_job`, if any."""
        return self._agent_session

    @property
    def linked_key(self) -> str | None:
        """Session key of the user RoomIO is (or was last) linked to; ``None`` before any link."""
        self._observe_link()
        return self._linked_key

    @property
    def linked_session(self) -> Session | None:
        """The lifecycle session of the user the AgentSession talks to.

        Its ``user_id`` and ``data`` survive a refresh inside the grace
        window. ``None`` before RoomIO linked anyone and once that user's
        session was removed.
        """
        key = self.linked_key
        return None if key is None else self.get(key)

    async def start_session(self, agent: Agent, *, room_options: RoomOptions | None = None) -> None:
        """Start the AgentSession on the job's room with ``close_on_disconnect=False``.

        Equivalent to ``session.start(agent, room=ctx.room,
        room_options=refresh_safe_room_options(room_options))``.

        Raises:
            RuntimeError: if no AgentSession was given to :func:`for_job`.
        """
        agent_session = self._agent_session
        if agent_session is None:
            raise RuntimeError("start_session() needs the AgentSession passed to for_job()")
        if self._agent_closed:
            # A restarted AgentSession is a new conversation: link it afresh.
            self._agent_closed = False
            self._agent_close_task = None
            self._linked_key = self._linked_identity = None
        elif self._conversation is not None and self._conversation.restored_key is None:
            await self._conversation.restore(
                agent, participant_identity=_identity_option(room_options)
            )
        await agent_session.start(
            agent, room=self._job.room, room_options=refresh_safe_room_options(room_options)
        )
        self._observe_link()

    async def restore_conversation(
        self, agent: Agent, *, participant_identity: str | None = None
    ) -> bool:
        """Give a crashed job's conversation back to ``agent`` and the AgentSession.

        :meth:`start_session` does this by itself; call it before
        ``AgentSession.start`` when you start the session yourself. It waits
        (at most 6 s) until the store's sessions are restored, then takes the
        conversation stored with ``participant_identity``'s session, or by
        default with the restored session saved last. The chat items go into
        ``agent``'s chat context (after its instructions) and the
        AgentSession's history; JSON userdata is given back when the
        AgentSession has none. Needs a durable store.

        Returns:
            Whether a conversation was restored.
        """
        if self._conversation is None:
            return False
        return await self._conversation.restore(agent, participant_identity=participant_identity)

    def _check_departure_timeout(self) -> None:
        # The server sends the room's departure_timeout with the job (0: unknown,
        # as in fake jobs). Past it, the room closes under the agent once the
        # last user left, so the rest of the window can never be used.
        departure = self._job.job.room.departure_timeout
        grace = self.config.grace_period
        if departure and grace > departure:
            self._job_log.warning(
                "agents.grace_exceeds_departure_timeout",
                category="session",
                room=self._job.room.name,
                grace_period=grace,
                departure_timeout=departure,
                hint="the room closes departure_timeout seconds after its last user left;"
                " lower grace_period or create the room with a longer departure_timeout",
            )

    @property
    def shutdown_budget(self) -> float:
        """The worker's ``shutdown_process_timeout`` this manager's shutdown is fitted in."""
        return self._shutdown_budget

    @property
    def when_empty(self) -> WhenEmpty:
        """What happens once the last user's session is removed (see :func:`for_job`)."""
        return self._when_empty

    # ------------------------------------------------------------------ shutdown budget

    def _shutdown_share(self, resources: int) -> float:
        """Seconds ``aclose()`` may take so that the whole of it fits in the budget.

        Past its deadline, ``aclose()`` still gives each resource up to
        ``_RESOURCE_FLOOR`` seconds (a leaked connection is worse than a late
        exit): those come out of the share, as does livekit-agents' own part.
        """
        floor = min(self.config.cleanup_timeout, _RESOURCE_FLOOR)
        return self._shutdown_budget - _BUDGET_RESERVE - floor * (resources + 1)

    def _shutdown_limit(self, resources: int) -> float:
        """What the manager asks when its shutdown starts (``_set_shutdown_limit``)."""
        return max(self._shutdown_share(resources), _RESOURCE_FLOOR)

    def _check_shutdown_budget(self) -> None:
        resources = InternalView(self._manager).resource_count
        share = self._shutdown_share(resources)
        config = self.config
        if share >= config.cleanup_timeout and share > 0:
            return
        # A cleanup callback may take cleanup_timeout seconds; at shutdown it would
        # be cut at the share, or the process killed with resources left open.
        self._job_log.warning(
            "agents.shutdown_budget_exceeded",
            category="shutdown",
            room=self._job.room.name,
            shutdown_budget=self._shutdown_budget,
            available=round(max(share, 0.0), 3),
            cleanup_timeout=config.cleanup_timeout,
            resources=resources,
            hint="the worker kills a job process shutdown_process_timeout seconds after asking"
            " it to stop: lower cleanup_timeout, or raise AgentServer(shutdown_process_timeout=...)"
            " and pass the same value as for_job(shutdown_budget=...)",
        )

    # ------------------------------------------------------------------ no deaf agent

    def _on_any_removed(self, session: Session) -> None:
        if self._when_empty == "keep" or self._ending or self.closed or self.sessions:
            return
        self._ending = True
        cause = session.history[-1].trigger if session.history else "removed"
        self._job_info(
            "agents.job_ending",
            "shutdown",
            why="last user removed",
            action=self._when_empty,
            key=session.key,
            trigger=cause,
            reason=reason_name(session.disconnect_reason),
        )
        if self._when_empty == "delete_room":
            self._end_task = asyncio.get_running_loop().create_task(
                self._delete_room_then_shutdown(), name="livekit-lifecycle:delete-room"
            )
        else:
            self._job.shutdown(reason="livekit-lifecycle: last user gone")

    async def _delete_room_then_shutdown(self) -> None:
        try:
            await asyncio.wait_for(self._job.delete_room(), self.config.cleanup_timeout)
        except Exception as exc:
            self._job_log.warning(
                "agents.delete_room_failed",
                category="shutdown",
                room=self._job.room.name,
                error=f"{type(exc).__name__}: {exc}",
            )
        self._job.shutdown(reason="livekit-lifecycle: last user gone (room deleted)")

    # ------------------------------------------------------------------ link tracking

    def _room_io(self) -> RoomIO | None:
        agent_session = self._agent_session
        if agent_session is None or self._agent_closed:
            return None
        try:
            return agent_session.room_io
        except RuntimeError:  # not started with a room (yet), or closed
            return None

    def _observe_link(self) -> None:
        """Remember which session RoomIO is linked to, while RoomIO still says so.

        RoomIO forgets its linked participant as soon as it leaves; the key
        is what decides, later, whether a reconnect needs a re-link and
        whether a removal closes the AgentSession.
        """
        room_io = self._room_io()
        if room_io is None:
            return
        linked = room_io.linked_participant
        if linked is None:
            return
        key = self._key_for(linked)
        if key is None:
            return
        if key != self._linked_key:
            self._job_info("agents.linked", "connect", key=key, identity=linked.identity)
        self._linked_key = key
        self._linked_identity = linked.identity

    def _key_for(self, participant: rtc.RemoteParticipant) -> str | None:
        session = self.by_sid(participant.sid)
        if session is not None:
            return session.key
        if participant.kind not in self.config.kinds:
            return None
        key = session_key(self.config, participant)
        # A key that cannot be had is the manager's to log (event.rejected), not ours.
        return key if isinstance(key, str) else None

    # ------------------------------------------------------------------ listeners

    def _on_created(self, session: Session) -> None:
        self._observe_link()
        # RoomIO may link in its own handler for the same room event, after ours.
        asyncio.get_running_loop().call_soon(self._observe_link)

    def _on_state_changed(self, session: Session, transition: Transition) -> None:
        self._observe_link()

    def _on_agent_activity(self, _event: object) -> None:
        self._observe_link()

    def _on_room_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._observe_link()

    def _on_reconnected(self, session: Session) -> None:
        self._observe_link()
        if session.key != self._linked_key:
            return
        room_io = self._room_io()
        participant = session.participant
        if room_io is None or participant is None:
            return
        identity = participant.identity
        linked = room_io.linked_participant
        if linked is not None and linked.identity == identity:
            return  # RoomIO already followed the new connection
        if linked is None and identity == self._linked_identity:
            return  # same identity, new sid: RoomIO re-links by itself
        room_io.set_participant(identity)
        self._linked_identity = identity
        self._job_info(
            "agents.relinked",
            "connect",
            key=session.key,
            identity=identity,
            sid=participant.sid,
            previous_identity=None if linked is None else linked.identity,
        )

    def _on_removed(self, session: Session) -> None:
        if self.closed or session.key != self._linked_key:
            # During aclose() the job is ending: livekit-agents closes the
            # AgentSession itself, before the shutdown callbacks run.
            return
        cause = session.history[-1].trigger if session.history else "removed"
        self._close_agent_session(
            "grace_expired" if cause == "expire" else "removed",
            key=session.key,
            reason=reason_name(session.disconnect_reason),
        )

    def _on_agent_session_close(self, event: CloseEvent) -> None:
        self._agent_closed = True
        if event.reason == CloseReason.PARTICIPANT_DISCONNECTED:
            self._job_log.warning(
                "agents.closed_by_room_io",
                category="session",
                room=self._job.room.name,
                key=self._linked_key,
                hint="RoomIO closed the AgentSession when its participant left: start it with"
                " JobLifecycleManager.start_session() or refresh_safe_room_options() so a"
                " refresh does not end the conversation",
            )

    def _close_agent_session(self, why: str, **fields: Any) -> None:
        agent_session = self._agent_session
        if agent_session is None or self._agent_closed or self._agent_close_task is not None:
            return
        if self._room_io() is None:
            return  # never started with a room: nothing RoomIO-linked to close
        self._job_info("agents.session_closing", "session", why=why, **fields)
        self._agent_close_task = asyncio.get_running_loop().create_task(
            self._close_agent(agent_session), name="livekit-lifecycle:agent-session-close"
        )

    async def _close_agent(self, agent_session: AgentSession[Any]) -> None:
        try:
            await agent_session.aclose()
        except Exception as exc:
            self._job_log.error(
                "agents.session_close_failed",
                category="session",
                room=self._job.room.name,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            return
        self._job_info("agents.session_closed", "session")

    async def _on_job_shutdown(self, reason: str) -> None:
        self._job_info("agents.job_shutdown", "shutdown", reason=reason)
        await self.aclose()
        task = self._agent_close_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.config.shutdown_timeout)

    def _job_info(self, event: str, category: str, **fields: Any) -> None:
        if self._job_stdlog.isEnabledFor(logging.INFO):
            self._job_log.info(event, category=category, room=self._job.room.name, **fields)


def _identity_option(options: RoomOptions | None) -> str | None:
    identity = None if options is None else options.participant_identity
    return identity if isinstance(identity, str) and identity else None
