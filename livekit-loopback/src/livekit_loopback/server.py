"""The :class:`LoopbackServer`: a small LiveKit-compatible server for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from types import TracebackType
from typing import Any, Literal

from aiohttp import WSMsgType, web
from google.protobuf.message import Message
from livekit import rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal
from livekit.protocol.room import RoomConfiguration

from ._agent_socket import WorkerConnection, serve_worker
from ._agent_views import DispatchView, JobView, WorkerView
from ._dispatch import AgentDispatcher
from ._dispatch_api import agent_dispatch_service
from ._log import get_logger
from ._net import require_ice_address
from ._room import ParticipantView, SignalLink
from ._room_api import room_service
from ._service import RoomService, ServiceSettings
from ._signal import JoinRequestError, SignalConnection, parse_join
from ._tokens import AuthError, TokenAuthority, bearer_token

__all__ = ["LoopbackServer"]

WaitState = Literal["joined", "active", "gone"]
_REASON = models.DisconnectReason
_DISCONNECT_TIMEOUT = 5.0
_RUNNER_SHUTDOWN_TIMEOUT = 2.0


class LoopbackServer:
    """A LiveKit-compatible server on this machine, for tests: real signalling, real WebRTC.

    The real SDK (``rtc.Room``) connects to it as to LiveKit: tokens are
    verified, the SDK gets a ``JoinResponse``, its PeerConnection really
    connects (aiortc plays the server side), and every participant event a
    room emits — joined, active, tracks published, muted and unpublished,
    disconnected with its reason — comes from what this server tells it.
    Published tracks are forwarded to subscribers as the publisher's RTP,
    never decoded (``track_subscribed`` and ``rtc.AudioStream`` work; frame
    metadata and end-to-end-encrypted media get through), with
    auto-subscribe and ``set_subscribed``; data packets are relayed to
    everyone or to their ``destination_identities``.

    Use it as an async context manager::

        async with LoopbackServer() as server:
            agent = await server.connect("agent", "demo", kind="agent")
            user = await server.connect("alice", "demo")
            await server.remove_participant("demo", "alice")

    Server-side controls reproduce what tests need and real servers do:
    :meth:`remove_participant` (``PARTICIPANT_REMOVED``), :meth:`close_room`
    (``ROOM_DELETED``) and :meth:`drop_signal` (the leave is lost: the
    participant is disconnected after ``leave_timeout``, like a closed
    browser). Rooms live until :meth:`close_room` or :meth:`stop`; there is
    no empty or departure timeout.

    The machine needs a non-loopback network interface: libwebrtc ignores
    loopback ones. :meth:`start` raises
    :class:`~livekit_loopback.LoopbackUnavailable` otherwise.

    Args:
        host: Address the HTTP/WebSocket endpoint listens on. Signalling is
            plain TCP, so loopback is fine here; only media needs another interface.
        port: TCP port; ``0`` picks a free one (see :attr:`url`).
        api_key: Key that tokens must be issued with.
        api_secret: Secret that signs tokens; a random one by default.
        leave_timeout: Seconds a participant whose signalling closed without a
            leave is kept, waiting for a resume, before the room hears it left
            (``SIGNAL_CLOSE``). LiveKit takes about 15-20 s; the default is
            short so tests stay fast.
        ping_interval: Seconds between the client's pings (must be > 0).
        ping_timeout: Seconds without a pong after which the client gives up.
        single_pc: Serve ``/rtc/v1`` (single PeerConnection). With ``False``
            it answers 404 there, and SDKs fall back to ``/rtc``.
        register_timeout: Seconds an agent worker has, once its ``/agent``
            socket is open, to send ``register`` (livekit-server: 10).
        availability_timeout: Seconds a worker has to accept or refuse a job
            before the next worker is tried (livekit-server: 10).
        media: ``"rtp"`` forwards each publisher's RTP packets as they come;
            ``"transcode"`` decodes each track once and re-encodes it for each
            subscriber (Opus, VP8), which also serves a subscriber that did
            not negotiate the publisher's codec, at a CPU cost.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "loopback",
        api_secret: str | None = None,
        leave_timeout: float = 3.0,
        ping_interval: int = 5,
        ping_timeout: int = 15,
        single_pc: bool = True,
        register_timeout: float = 10.0,
        availability_timeout: float = 10.0,
        media: Literal["rtp", "transcode"] = "rtp",
    ) -> None:
        if leave_timeout < 0:
            raise ValueError(f"leave_timeout must be >= 0 seconds, got {leave_timeout!r}")
        if ping_interval <= 0 or ping_timeout <= 0:
            raise ValueError("ping_interval and ping_timeout must be > 0 seconds")
        if media not in ("rtp", "transcode"):
            raise ValueError(f"media must be 'rtp' or 'transcode', got {media!r}")
        self._host = host
        self._port = port
        self._auth = TokenAuthority(api_key, api_secret or secrets.token_urlsafe(32))
        self._single_pc = single_pc
        self._register_timeout = register_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[SignalConnection[Any]] = set()
        self._clients: list[rtc.Room] = []
        self._service = RoomService(
            ServiceSettings(
                leave_timeout=leave_timeout,
                lost_signal_reason=_REASON.SIGNAL_CLOSE,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                forward_rtp=media == "rtp",
            ),
            self._spawn,
        )
        self._agents = AgentDispatcher(
            self._auth,
            self._service.rooms,
            self._spawn,
            self._service.changed,
            availability_timeout=availability_timeout,
        )
        self._service.observer = self._agents
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._stopped: asyncio.Event | None = None
        self._log = get_logger()

    # ------------------------------------------------------------------ identity

    @property
    def url(self) -> str:
        """``ws://host:port`` to give ``rtc.Room.connect`` (available once started)."""
        if self._url is None:
            raise RuntimeError("the LoopbackServer is not started: use `async with` or start()")
        return self._url

    @property
    def api_key(self) -> str:
        return self._auth.api_key

    @property
    def api_secret(self) -> str:
        return self._auth.api_secret

    @property
    def leave_timeout(self) -> float:
        return self._service.settings.leave_timeout

    def token(
        self,
        identity: str,
        room: str,
        *,
        name: str | None = None,
        metadata: str | None = None,
        attributes: Mapping[str, str] | None = None,
        kind: str = "standard",
        ttl: datetime.timedelta = datetime.timedelta(hours=1),
        room_config: RoomConfiguration | None = None,
        **grants: Any,
    ) -> str:
        """A join token for ``identity`` in ``room``, signed with this server's key pair.

        ``kind`` is ``"standard"``, ``"agent"``, ``"sip"``, ``"ingress"``,
        ``"egress"`` or ``"connector"``. ``grants`` are ``livekit.api.VideoGrants``
        fields, e.g. ``hidden=True`` or ``can_publish=False``. ``room_config``
        configures the room when this join creates it: its ``agents`` are the
        agents dispatched to it (none given: the automatic dispatch, agent name ``""``).
        """
        return self._auth.issue(
            identity,
            room,
            name=name,
            metadata=metadata,
            attributes=attributes,
            kind=kind,
            ttl=ttl,
            room_config=room_config,
            **grants,
        )

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> LoopbackServer:
        """Listen on ``host:port``.

        Raises:
            LoopbackUnavailable: when the machine has no non-loopback interface.
            RuntimeError: when already started or stopped.
        """
        if self._state != "new":
            raise RuntimeError(f"this LoopbackServer is {self._state}; start() runs once")
        require_ice_address()
        app = web.Application(middlewares=[_allow_any_origin])
        app.router.add_get("/rtc", self._rtc)
        app.router.add_get("/rtc/v1", self._rtc_v1)
        app.router.add_get("/rtc/validate", self._validate)
        app.router.add_get("/rtc/v1/validate", self._validate)
        app.router.add_get("/agent", self._agent)
        room_service(self._auth, self._service).mount(app.router)
        agent_dispatch_service(self._auth, self._service, self._agents).mount(app.router)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=_RUNNER_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = self._bound_port(runner)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"ws://{host}:{port}"
        self._state = "running"
        self._log.info("server.started", url=self._url)
        return self

    @staticmethod
    def _bound_port(runner: web.AppRunner) -> int:
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        raise RuntimeError("the LoopbackServer did not bind a TCP port")

    async def stop(self) -> None:
        """Stop, leaving nothing behind. Idempotent; concurrent callers wait for the one stop.

        Rooms made by :meth:`connect` are disconnected first; every other
        participant is told ``SERVER_SHUTDOWN``; then every socket, peer and
        task of the server is closed.
        """
        if self._state == "new":
            self._state = "stopped"
            return
        if self._stopped is not None:
            await self._stopped.wait()
            return
        self._stopped = asyncio.Event()
        self._state = "stopping"
        try:
            clients, self._clients = self._clients, []
            await asyncio.gather(*(self._disconnect_client(room) for room in clients))
            await self._service.shutdown()
            for worker_link in self._agents.shutdown():
                worker_link.close()
            await _wait_all([link.wait_closed() for link in self._links], _DISCONNECT_TIMEOUT)
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            tasks = [task for task in self._tasks if not task.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._state = "stopped"
            self._stopped.set()
            self._log.info("server.stopped")

    async def aclose(self) -> None:
        """Same as :meth:`stop`."""
        await self.stop()

    async def __aenter__(self) -> LoopbackServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def open_connections(self) -> int:
        """Signalling sockets still open (0 once stopped: nothing is left behind)."""
        return sum(1 for link in self._links if not link.ws.closed)

    @property
    def pending_tasks(self) -> int:
        """Server tasks not finished yet (0 once stopped)."""
        return sum(1 for task in self._tasks if not task.done())

    # ------------------------------------------------------------------ clients

    async def connect(
        self,
        identity: str,
        room: str,
        *,
        options: rtc.RoomOptions | None = None,
        timeout: float = 20.0,
        **token: Any,
    ) -> rtc.Room:
        """Connect a real ``rtc.Room`` as ``identity`` and return it, connected.

        ``token`` takes the keyword arguments of :meth:`token` (``kind="agent"``,
        ``attributes=...``, grants). Rooms still connected when the server
        stops are disconnected first; disconnecting one yourself is fine too.

        Raises:
            livekit.rtc.ConnectError: when the SDK fails to connect.
            TimeoutError: when it takes more than ``timeout`` seconds. The SDK
                cannot be cancelled: if it connects later anyway, :meth:`stop`
                disconnects it (``SERVER_SHUTDOWN``).
        """
        if self._state != "running":
            raise RuntimeError("the LoopbackServer is not running")
        jwt = self.token(identity, room, **token)
        client = rtc.Room()
        self._clients.append(client)
        try:
            await asyncio.wait_for(
                client.connect(self.url, jwt, options or rtc.RoomOptions()), timeout
            )
        except asyncio.TimeoutError:
            await self._disconnect_client(client)
            raise TimeoutError(
                f"{identity!r} did not connect to {self.url} within {timeout}s"
            ) from None
        except BaseException:
            self._clients.remove(client)
            raise
        return client

    async def _disconnect_client(self, client: rtc.Room) -> None:
        with contextlib.suppress(ValueError):
            self._clients.remove(client)
        try:
            await asyncio.wait_for(client.disconnect(), _DISCONNECT_TIMEOUT)
        except Exception as exc:
            self._log.warning("client.disconnect_failed", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ observation

    @property
    def rooms(self) -> tuple[str, ...]:
        """Names of the rooms that exist now."""
        return tuple(self._service.rooms)

    def participants(self, room: str) -> list[ParticipantView]:
        """Everyone in ``room`` now, in join order (empty for an unknown room)."""
        found = self._service.rooms.get(room)
        return [] if found is None else [ParticipantView.of(p) for p in found]

    def participant(self, room: str, identity: str) -> ParticipantView | None:
        """``identity`` in ``room`` now, or ``None``."""
        found = self._service.rooms.get(room)
        current = None if found is None else found.participants.get(identity)
        return None if current is None else ParticipantView.of(current)

    async def wait_for_participant(
        self,
        room: str,
        identity: str,
        state: WaitState = "active",
        *,
        sid: str | None = None,
        timeout: float = 10.0,
    ) -> ParticipantView | None:
        """Wait until ``identity`` is ``joined`` (or later), ``active``, or ``gone`` from ``room``.

        With ``sid``, only that connection counts (``gone`` then means that
        connection left, even if the identity joined again). Returns the
        participant (``None`` for ``gone``).

        Raises:
            TimeoutError: after ``timeout`` seconds.
            ValueError: for an unknown state.
        """
        if state not in ("joined", "active", "gone"):
            raise ValueError(f"state must be 'joined', 'active' or 'gone', got {state!r}")

        def current() -> ParticipantView | None:
            view = self.participant(room, identity)
            if view is not None and sid is not None and view.sid != sid:
                return None
            return view

        def reached() -> bool:
            view = current()
            if state == "gone":
                return view is None
            return view is not None and (state == "joined" or view.state == "active")

        try:
            await self._service.wait_until(reached, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{identity!r} in room {room!r} did not become {state} within {timeout}s"
                f" (now: {current()})"
            ) from None
        return current()

    async def wait_for_subscription(
        self,
        room: str,
        identity: str,
        track_sid: str,
        *,
        subscribed: bool = True,
        timeout: float = 10.0,
    ) -> None:
        """Wait until the server forwards ``track_sid`` to ``identity`` (or, with
        ``subscribed=False``, no longer does).

        This is the server's side of a subscription: the client's
        ``track_subscribed`` follows once the media section is negotiated.

        Raises:
            TimeoutError: after ``timeout`` seconds.
        """

        def reached() -> bool:
            view = self.participant(room, identity)
            forwarded = view is not None and track_sid in view.subscribed
            return forwarded == subscribed

        try:
            await self._service.wait_until(reached, timeout)
        except TimeoutError:
            state = "forwarded" if subscribed else "no longer forwarded"
            raise TimeoutError(
                f"{track_sid} was not {state} to {identity!r} in room {room!r} within {timeout}s"
                f" (now: {self.participant(room, identity)})"
            ) from None

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; it is checked again after every change on the
        server (rooms, participants, tracks, workers, jobs).

        Raises:
            TimeoutError: after ``timeout`` seconds.
        """
        await self._service.wait_until(predicate, timeout)

    # ------------------------------------------------------------------ server-side controls

    async def remove_participant(
        self, room: str, identity: str, *, reason: int = _REASON.PARTICIPANT_REMOVED
    ) -> None:
        """Remove ``identity`` from ``room``, like ``RoomService.RemoveParticipant``.

        The participant's SDK gets a leave (it disconnects, no reconnect) and
        everyone else sees ``participant_disconnected`` with ``reason``.

        Raises:
            LookupError: when there is no such room or participant.
        """
        participant = self._service.find(room, identity)
        link = participant.link
        self._service.remove(participant, reason, tell_participant=True)
        await self._flushed(link)

    async def close_room(self, room: str, *, reason: int = _REASON.ROOM_DELETED) -> None:
        """Delete ``room``, like ``RoomService.DeleteRoom``.

        Participants are removed in join order: each gets a leave with
        ``reason``, and those still in the room see it leave.

        Raises:
            LookupError: when there is no such room.
        """
        found = self._service.rooms.get(room)
        links = [] if found is None else [p.link for p in found]
        self._service.close_room(room, reason)
        await asyncio.gather(*(self._flushed(link) for link in links))

    async def drop_signal(
        self,
        identity: str,
        room: str | None = None,
        *,
        leave_timeout: float | None = None,
    ) -> None:
        """Lose ``identity``'s connection without a leave, as when a browser tab is closed.

        The server cuts the signalling socket and the PeerConnection and
        refuses the client's attempts to resume, so the room still shows the
        participant until ``leave_timeout`` (default: the server's) passes;
        then everyone sees it disconnect with ``SIGNAL_CLOSE``. A new
        connection with the same identity before that replaces it
        (``DUPLICATE_IDENTITY``), exactly as with LiveKit. The dropped
        client's own ``rtc.Room`` ends up disconnected.

        Raises:
            LookupError: when the participant is not found, or ``room`` is
                omitted and the identity is in several rooms.
        """
        timeout = self.leave_timeout if leave_timeout is None else leave_timeout
        if timeout < 0:
            raise ValueError(f"leave_timeout must be >= 0 seconds, got {timeout!r}")
        if room is None:
            rooms = [name for name, r in self._service.rooms.items() if identity in r.participants]
            if len(rooms) != 1:
                raise LookupError(
                    f"{identity!r} is in {len(rooms)} rooms ({rooms}); pass room= to choose"
                )
            room = rooms[0]
        participant = self._service.find(room, identity)
        link = participant.link
        self._service.drop_signal(participant, timeout)
        await self._flushed(link)

    @staticmethod
    async def _flushed(link: SignalLink | None) -> None:
        """Wait (bounded) until what was queued on ``link`` has gone out and it closed."""
        if link is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(link.wait_closed(), _DISCONNECT_TIMEOUT)

    # ------------------------------------------------------------------ agents

    @property
    def workers(self) -> tuple[WorkerView, ...]:
        """The agent workers registered now, in registration order."""
        return tuple(WorkerView.of(worker) for worker in self._agents.workers.values())

    @property
    def jobs(self) -> tuple[JobView, ...]:
        """Every job given to a worker since the server started, ended ones too, oldest first."""
        return tuple(JobView.of(job) for job in self._agents.jobs.values())

    def dispatches(self, room: str) -> tuple[DispatchView, ...]:
        """The dispatches of ``room`` (what ``ListDispatch`` returns)."""
        return tuple(DispatchView.of(d) for d in self._agents.dispatches.get(room, ()))

    async def wait_for_worker(
        self, agent_name: str = "", *, exclude: Collection[str] = (), timeout: float = 30.0
    ) -> WorkerView:
        """Wait until a worker with ``agent_name`` is registered (ids in ``exclude`` aside).

        Pass the ids of the workers you know in ``exclude`` to wait for a new
        registration (a worker that lost its socket registers again under a new id).

        Raises:
            TimeoutError: after ``timeout`` seconds.
        """

        def found() -> WorkerView | None:
            return next(
                (w for w in self.workers if w.agent_name == agent_name and w.id not in exclude),
                None,
            )

        try:
            await self._service.wait_until(lambda: found() is not None, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no agent worker {agent_name!r} registered within {timeout}s"
                f" (workers: {self.workers})"
            ) from None
        view = found()
        assert view is not None
        return view

    async def wait_for_job(
        self,
        room: str,
        *,
        agent_name: str | None = None,
        status: str = "running",
        timeout: float = 30.0,
    ) -> JobView:
        """Wait until a job in ``room`` (for ``agent_name``, if given) has ``status``.

        ``status`` is ``"running"`` (assigned to a worker), ``"success"`` or
        ``"failed"``; the first job found wins, oldest first.

        Raises:
            TimeoutError: after ``timeout`` seconds.
        """

        def found() -> JobView | None:
            return next(
                (
                    job
                    for job in self.jobs
                    if job.room == room
                    and job.status == status
                    and (agent_name is None or job.agent_name == agent_name)
                ),
                None,
            )

        try:
            await self._service.wait_until(lambda: found() is not None, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no {status} job in room {room!r} within {timeout}s (jobs: {self.jobs})"
            ) from None
        view = found()
        assert view is not None
        return view

    def dispatch(
        self,
        room: str,
        agent_name: str = "",
        *,
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> DispatchView:
        """Dispatch ``agent_name`` to ``room``, like ``AgentDispatchService.CreateDispatch``.

        The room is created if it does not exist (then it also gets its
        default dispatch, as with livekit-server). The job is offered to the
        workers at once; :meth:`wait_for_job` waits for it to be assigned.
        """
        if self._state != "running":
            raise RuntimeError("the LoopbackServer is not running")
        found = self._service.room(room)
        return DispatchView.of(
            self._agents.create_dispatch(
                found, agent_name, metadata=metadata, attributes=attributes
            )
        )

    def delete_dispatch(self, room: str, dispatch_id: str) -> DispatchView:
        """Delete a dispatch, like ``AgentDispatchService.DeleteDispatch``: its jobs are terminated.

        Raises:
            LookupError: when ``room`` has no such dispatch.
        """
        return DispatchView.of(self._agents.delete_dispatch(room, dispatch_id))

    def drop_worker(self, worker_id: str) -> None:
        """Cut a worker's ``/agent`` socket, as a network failure would.

        livekit-agents registers again at once, under a new worker id, and
        sends ``migrate_job`` for the jobs it still runs: they move to the new
        registration (see :meth:`wait_for_worker` with ``exclude``).

        Raises:
            LookupError: when no worker has that id.
        """
        worker = self._agents.workers.get(worker_id)
        if worker is None:
            raise LookupError(
                f"no agent worker {worker_id!r} (workers: {sorted(self._agents.workers)})"
            )
        worker.link.abort()

    async def _agent(self, request: web.Request) -> web.StreamResponse:
        if self._state != "running":
            return web.Response(status=503, text="the server is shutting down")
        try:
            self._auth.verify_grant(bearer_token(request.headers, request.query), "agent")
        except AuthError as exc:
            self._log.warning("agent.unauthorized", status=exc.status, error=str(exc))
            return web.Response(status=exc.status, text=str(exc))
        ws = web.WebSocketResponse(max_msg_size=0, timeout=2.0)
        await ws.prepare(request)
        link = WorkerConnection(request, ws, f"agent/{id(ws):x}", self._spawn)
        self._links.add(link)
        try:
            await serve_worker(ws, link, self._agents, self._register_timeout)
        finally:
            link.close()
            await link.wait_closed()
            self._links.discard(link)
        return ws

    # ------------------------------------------------------------------ HTTP

    async def _not_found(self, request: web.Request) -> web.Response:
        self._log.debug("http.not_found", method=request.method, path=request.path)
        return web.Response(status=404, text="not found")

    async def _validate(self, request: web.Request) -> web.Response:
        if not self._single_pc and request.path.rstrip("/").endswith("/v1/validate"):
            # livekit-client asks here after a failed /rtc/v1 upgrade: a 404
            # (not a 401) is what makes it fall back to /rtc.
            return await self._not_found(request)
        try:
            self._auth.verify_join(bearer_token(request.headers, request.query))
        except AuthError as exc:
            return web.Response(status=exc.status, text=str(exc))
        return web.Response(text="success")

    async def _rtc_v1(self, request: web.Request) -> web.StreamResponse:
        if not self._single_pc:
            return await self._not_found(request)
        return await self._rtc(request)

    async def _rtc(self, request: web.Request) -> web.StreamResponse:
        if self._state != "running":
            return web.Response(status=503, text="the server is shutting down")
        try:
            params = parse_join(request.path, request.query)
            grant = self._auth.verify_join(bearer_token(request.headers, request.query))
        except JoinRequestError as exc:
            self._log.warning("signal.bad_join_request", error=str(exc))
            return web.Response(status=400, text=str(exc))
        except AuthError as exc:
            self._log.warning("signal.unauthorized", status=exc.status, error=str(exc))
            return web.Response(status=exc.status, text=str(exc))
        self._log.debug(
            "signal.join_request",
            path=request.path,
            query=sorted(request.query),
            bearer=request.headers.get("Authorization", "").startswith("Bearer "),
            reconnect=params.reconnect,
            participant_sid=params.participant_sid or None,
            join_request=_shape(params.request),
        )
        ws = web.WebSocketResponse(max_msg_size=0, timeout=2.0)
        await ws.prepare(request)
        link = SignalConnection[signal.SignalResponse](
            request, ws, f"{grant.room}/{grant.identity}", self._spawn
        )
        self._links.add(link)
        try:
            if params.reconnect:
                participant = self._service.resume(grant, params, link)
            else:
                participant = self._service.join(grant, params, link)
            if participant is not None and params.publisher_offer is not None:
                try:
                    await self._service.answer(participant, params.publisher_offer)
                except Exception:
                    self._log.exception("signal.answer_failed", identity=grant.identity)
            async for message in ws:
                if participant is None or message.type != WSMsgType.BINARY:
                    continue
                try:
                    request_message = signal.SignalRequest.FromString(message.data)
                except Exception as exc:
                    self._log.warning("signal.undecodable", error=f"{type(exc).__name__}: {exc}")
                    continue
                try:
                    await self._service.handle(participant, request_message)
                except Exception:
                    self._log.exception(
                        "signal.handler_failed",
                        identity=grant.identity,
                        signal=request_message.WhichOneof("message"),
                    )
            if participant is not None:
                self._service.link_lost(participant, link)
        finally:
            link.close()
            await link.wait_closed()
            self._links.discard(link)
        return ws

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("server.task_failed", task=task.get_name(), exc_info=task.exception())


@web.middleware
async def _allow_any_origin(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """CORS for plain HTTP answers: a browser page served from another origin reads
    ``/rtc/validate`` (livekit-client does after a failed upgrade), as LiveKit allows."""
    response = await handler(request)
    if not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def _wait_all(waits: list[Coroutine[Any, Any, None]], timeout: float) -> None:
    """Run ``waits`` concurrently for at most ``timeout`` seconds; cancel what is left."""
    if not waits:
        return
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _shape(message: Message | None) -> dict[str, Any] | None:
    """The fields a protobuf message sets, nested messages as their own shape (for logs)."""
    if message is None:
        return None
    shape: dict[str, Any] = {}
    for descriptor, value in message.ListFields():
        if isinstance(value, Message):
            shape[descriptor.name] = _shape(value)
        else:
            shape[descriptor.name] = type(value).__name__
    return shape
