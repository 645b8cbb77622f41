"""livekit-agents integration: one call per job makes the agent session survive a browser refresh.

Needs the ``agents`` extra (``pip install 'livekit-lifecycle[agents]'``); this is
the only module of the package that imports ``livekit.agents``.

::

    manager = await LifecycleManager.for_job(ctx, session=agent_session, config=config)
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
  the ``AgentSession`` is closed, once.

RoomIO closes the ``AgentSession`` itself when the linked participant leaves
with ``CLIENT_INITIATED`` (what a refresh sends) unless it was started with
``close_on_disconnect=False``: start it with :meth:`JobLifecycleManager.start_session`
or pass :func:`refresh_safe_room_options` to ``AgentSession.start``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, CloseEvent, CloseReason, JobContext
from livekit.agents.voice.room_io import RoomIO, RoomOptions

from ._intake import session_key
from .config import LifecycleConfig
from .log import LOGGER_NAME, get_logger
from .manager import LifecycleManager
from .session import Session, Transition, reason_name

__all__ = ["JobLifecycleManager", "for_job", "refresh_safe_room_options"]


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
) -> JobLifecycleManager:
    """Connect the job if needed and return a :class:`JobLifecycleManager` attached to its room.

    Also available as ``LifecycleManager.for_job``. Call it in the entrypoint
    before ``AgentSession.start`` (or use :meth:`JobLifecycleManager.start_session`).

    Args:
        ctx: The job's context.
        session: The job's ``AgentSession``, started or not yet. When given,
            it is kept linked to its user across refreshes and closed when
            that user's session is removed.
        config: The lifecycle configuration (``grace_period``, ``session_key``...).
        resources: Closed at job shutdown, after every session, last first
            (objects with ``aclose()``/``close()``, or callables). ``None``
            entries are skipped, so an optional TTS can be passed as is.

    Raises:
        TypeError: for a ``ctx`` that is not a ``JobContext``, a ``session``
            that is not an ``AgentSession``, or a resource that cannot be closed.
    """
    if not isinstance(ctx, JobContext):
        raise TypeError(f"ctx must be a livekit.agents.JobContext, got {type(ctx).__name__}")
    # Room.connect() fills room.remote_participants without emitting
    # participant_connected: attaching after the connection is what lets the
    # manager adopt users who were already waiting in the room.
    await ctx.connect()
    return JobLifecycleManager(ctx, session=session, config=config, resources=resources)


class JobLifecycleManager(LifecycleManager):
    """A :class:`LifecycleManager` bound to a livekit-agents job and, optionally, its AgentSession.

    Create it with :func:`for_job` (or ``LifecycleManager.for_job``). Everything
    of :class:`LifecycleManager` works as usual; on top of it:

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
        super().__init__(config)
        self._job = ctx
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
        ctx.add_shutdown_callback(self._on_job_shutdown)
        self._check_departure_timeout()
        # Users already in the room (with automatic dispatch the first user is
        # always there: their join created the room and the job) are adopted on
        # the loop's next turn, so listeners registered right after for_job
        # returns see their `created` and every other notification.
        self._register(ctx.room, adopt_later=True)
        self._observe_link()

    # ------------------------------------------------------------------ public API

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
        await agent_session.start(
            agent, room=self._job.room, room_options=refresh_safe_room_options(room_options)
        )
        self._observe_link()

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
