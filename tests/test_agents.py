"""The livekit-agents integration against a real rtc.Room, a real AgentSession and its real RoomIO.

The room is driven through the SDK's own event translation (RoomDriver); the job
context is livekit-agents' ``fake_job_context``; the AgentSession has no models
(nothing here needs one), so RoomIO, its linking and its close-on-disconnect
logic are the library's own code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
from livekit import rtc
from livekit.agents import Agent, AgentSession, CloseEvent, CloseReason, JobContext
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.room_io import RoomOptions

from livekit_lifecycle import LifecycleConfig, LifecycleManager, State
from livekit_lifecycle.agents import JobLifecycleManager, for_job, refresh_safe_room_options
from livekit_lifecycle.testing import RoomDriver

REASON = rtc.DisconnectReason
WAIT = 2.0
SHORT = 0.05
LONG = 30.0
# No audio track is published: publishing needs a native room handle, which a
# RoomDriver room does not have. Linking does not depend on it.
ROOM_OPTIONS = RoomOptions(audio_output=False)


def by_user(participant: rtc.RemoteParticipant) -> str:
    """Starter-app identities: ``<user>#<page load>``; the session key is the user."""
    return participant.identity.split("#", 1)[0]


class Closes:
    """Records the AgentSession's ``close`` events and lets a test wait for the first one."""

    def __init__(self, session: AgentSession[Any]) -> None:
        self.reasons: list[CloseReason] = []
        self._event = asyncio.Event()
        session.on("close", self._on_close)

    def _on_close(self, event: CloseEvent) -> None:
        self.reasons.append(event.reason)
        self._event.set()

    async def wait(self, count: int = 1) -> list[CloseReason]:
        """Wait until ``count`` closes were seen (at most ``WAIT`` seconds); all reasons so far."""

        async def reached() -> None:
            while len(self.reasons) < count:
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(reached(), WAIT)
        return self.reasons


class Resource:
    """An application resource (think TTS client) that counts how often it is closed."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name = name
        self.closes = 0
        self._order = order

    async def aclose(self) -> None:
        self.closes += 1
        self._order.append(self.name)


@pytest.fixture
def job(driver: RoomDriver) -> Iterator[JobContext]:
    with fake_job_context(room=driver.room, agent_identity="agent") as ctx:
        yield ctx


@pytest.fixture
async def agent_session() -> AsyncIterator[AgentSession[Any]]:
    session: AgentSession[Any] = AgentSession()
    yield session
    await session.aclose()  # a no-op when the test closed it already


async def start(
    job: JobContext,
    agent_session: AgentSession[Any],
    *,
    grace_period: float = SHORT,
    **config: object,
) -> JobLifecycleManager:
    manager = await for_job(
        job,
        session=agent_session,
        config=LifecycleConfig(grace_period=grace_period, **config),  # type: ignore[arg-type]
    )
    await manager.start_session(Agent(instructions="test"), room_options=ROOM_OPTIONS)
    return manager


async def shut_down_job(job: JobContext, driver: RoomDriver, reason: str = "test") -> None:
    """The job runner's shutdown order (livekit-agents 1.8.9, job_proc_lazy_main._shutdown_job):
    close the primary AgentSession, disconnect the room, then run every shutdown
    callback concurrently. ``fake_job_context`` has no runner, so this replays it."""
    primary = job._primary_agent_session
    if primary is not None:
        await primary.aclose()
    driver.room_disconnected(REASON.CLIENT_INITIATED)
    await asyncio.gather(*(callback(reason) for callback in job._shutdown_callbacks))


def linked(agent_session: AgentSession[Any]) -> rtc.RemoteParticipant | None:
    return agent_session.room_io.linked_participant


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.msg == name]


# --------------------------------------------------------------------------- wiring


async def test_for_job_attaches_and_registers_shutdown(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    callbacks = len(job._shutdown_callbacks)
    manager = await for_job(job, session=agent_session)
    # The integration wraps a manager (composition): it is not one.
    assert isinstance(manager, JobLifecycleManager) and not isinstance(manager, LifecycleManager)
    assert isinstance(manager.manager, LifecycleManager) and manager.manager.room is job.room
    assert manager.room is driver.room and manager.job is job
    assert manager.agent_session is agent_session
    assert len(job._shutdown_callbacks) == callbacks + 1
    driver.connect("alice", active=True)
    assert manager.state_of("alice") is State.ACTIVE
    await manager.aclose()


async def test_for_job_adopts_users_already_in_the_room(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    driver.connect("alice", active=True)
    manager = await start(job, agent_session)
    assert manager.state_of("alice") is State.ACTIVE
    assert linked(agent_session) is driver.room.remote_participants["alice"]
    assert manager.linked_key == "alice"
    await manager.aclose()


async def test_listeners_registered_after_for_job_see_the_users_already_there(
    job: JobContext, driver: RoomDriver
) -> None:
    """The first user is in the room before the job connects (automatic dispatch):
    every notification their adoption causes reaches listeners registered after
    ``for_job`` returns, as the docs register them."""
    driver.connect("alice", active=True)
    driver.publish_track("alice")
    driver.connect("bob", active=False)
    manager = await for_job(job, config=LifecycleConfig(grace_period=LONG))
    seen: list[tuple[str, str, str]] = []
    manager.on("created", lambda s: seen.append(("created", s.key, s.state.value)))
    manager.on("state_changed", lambda s, t: seen.append(("state_changed", s.key, t.dest.value)))
    identified = manager.once("created", lambda s: manager.set_user_id(s.key, "first-" + s.key))
    assert callable(identified)
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    await manager.wait_for("bob", State.CONNECTING, WAIT)
    assert ("created", "alice", "connecting") in seen and ("created", "bob", "connecting") in seen
    assert ("state_changed", "alice", "active") in seen
    assert manager.get("alice").user_id == "first-alice"  # type: ignore[union-attr]
    assert len(manager.get("alice").tracks) == 1  # type: ignore[union-attr]

    # What comes after adoption reaches them as well.
    driver.activate("bob")
    await manager.wait_for("bob", State.ACTIVE, WAIT)
    assert ("state_changed", "bob", "active") in seen
    await manager.aclose()


async def test_a_user_already_there_is_adopted_once_even_if_an_event_comes_first(
    job: JobContext, driver: RoomDriver
) -> None:
    driver.connect("alice", active=False)
    manager = await for_job(job, config=LifecycleConfig(grace_period=LONG))
    created: list[str] = []
    manager.on("created", lambda s: created.append(s.key))
    driver.activate("alice")  # handled before the loop turns: adoption comes first
    assert manager.state_of("alice") is State.ACTIVE
    await asyncio.sleep(0)  # the deferred adoption finds nothing left to do
    assert created == ["alice"] and manager.state_of("alice") is State.ACTIVE
    await manager.aclose()


async def test_bad_arguments_are_clear_errors(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    with pytest.raises(TypeError, match="JobContext"):
        await for_job(driver.room)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AgentSession"):
        await for_job(job, session=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no aclose"):
        await for_job(job, resources=[42])
    with pytest.raises(TypeError, match="RoomOptions"):
        refresh_safe_room_options({"close_on_disconnect": False})  # type: ignore[arg-type]
    manager = await for_job(job)
    with pytest.raises(RuntimeError, match="AgentSession"):
        await manager.start_session(Agent(instructions="test"))
    await manager.aclose()


async def test_a_window_longer_than_the_departure_timeout_is_reported(
    job: JobContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="livekit_lifecycle")
    job.job.room.departure_timeout = 20  # what the server sends for a default room
    manager = await for_job(job, config=LifecycleConfig(grace_period=30.0))
    [warning] = events(caplog, "agents.grace_exceeds_departure_timeout")
    assert (warning.__dict__["grace_period"], warning.__dict__["departure_timeout"]) == (30.0, 20)
    await manager.aclose()
    caplog.clear()
    manager = await for_job(job, config=LifecycleConfig(grace_period=15.0))
    assert events(caplog, "agents.grace_exceeds_departure_timeout") == []
    await manager.aclose()


def test_refresh_safe_room_options_keeps_everything_else() -> None:
    options = RoomOptions(audio_output=False, participant_identity="alice")
    safe = refresh_safe_room_options(options)
    assert safe.close_on_disconnect is False and options.close_on_disconnect is True
    assert safe.audio_output is False and safe.participant_identity == "alice"
    assert refresh_safe_room_options().close_on_disconnect is False


# --------------------------------------------------------------------------- refresh


async def test_refresh_inside_the_window_keeps_the_agent_session_open_and_relinked(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    closes = Closes(agent_session)
    manager = await start(job, agent_session, grace_period=LONG)
    first = driver.connect("alice", active=True)
    assert linked(agent_session) is first
    manager.set_user_id("alice", "user-42")
    session = manager.linked_session
    assert session is not None
    session.data["topic"] = "billing"

    second = driver.refresh("alice")  # CLIENT_INITIATED, as a browser refresh sends
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    assert linked(agent_session) is second  # RoomIO re-linked the same identity by itself
    assert manager.linked_session is session
    assert session.user_id == "user-42" and session.data == {"topic": "billing"}
    assert session.reconnects == 1 and session.cleanups == 1
    await manager.idle()
    assert closes.reasons == []
    await manager.aclose()


async def test_refresh_under_a_new_identity_with_the_same_key_is_relinked(
    job: JobContext,
    driver: RoomDriver,
    agent_session: AgentSession[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    closes = Closes(agent_session)
    manager = await start(job, agent_session, grace_period=LONG, session_key=by_user)
    driver.connect("alice#1", active=True)
    manager.set_user_id("alice", "user-42")

    driver.disconnect("alice#1")
    await manager.wait_for("alice", State.GRACE, WAIT)
    assert linked(agent_session) is None
    second = driver.connect("alice#2", active=True)  # RoomIO alone would wait for alice#1
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    assert linked(agent_session) is second
    assert manager.linked_session is not None
    assert manager.linked_session.user_id == "user-42"
    relinks = events(caplog, "agents.relinked")
    assert [(r.__dict__["identity"], r.__dict__["key"]) for r in relinks] == [("alice#2", "alice")]

    driver.disconnect("alice#2")  # RoomIO follows its new participant: still no close
    await manager.wait_for("alice", State.GRACE, WAIT)
    assert closes.reasons == []
    await manager.aclose()


async def test_takeover_by_a_new_identity_relinks_and_ignores_the_late_leave(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    """The new page joins before the old page's leave arrives (~15 s later, SIGNAL_CLOSE)."""
    closes = Closes(agent_session)
    manager = await start(job, agent_session, grace_period=SHORT, session_key=by_user)
    first = driver.connect("alice#1", active=True)
    assert linked(agent_session) is first
    second = driver.connect("alice#2", active=True)
    reconnected = await manager.wait_for("alice", State.ACTIVE, WAIT)
    assert reconnected.sid == second.sid
    assert linked(agent_session) is second

    driver.disconnect("alice#1", REASON.SIGNAL_CLOSE)
    await manager.idle()
    assert manager.state_of("alice") is State.ACTIVE
    assert linked(agent_session) is second
    assert closes.reasons == []
    await manager.aclose()


async def test_the_agents_own_full_reconnect_keeps_the_session(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    """The SDK reports every user gone (reason unknown), then back with the same sids."""
    closes = Closes(agent_session)
    manager = await start(job, agent_session, grace_period=LONG)
    driver.connect("alice", active=True)
    driver.publish_track("alice")
    driver.full_reconnect()
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    await manager.idle()
    assert linked(agent_session) is driver.room.remote_participants["alice"]
    assert closes.reasons == []
    await manager.aclose()


# --------------------------------------------------------------------------- closing


async def test_expiry_closes_the_agent_session_exactly_once(
    job: JobContext,
    driver: RoomDriver,
    agent_session: AgentSession[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    closes = Closes(agent_session)
    manager = await start(job, agent_session)
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    assert await closes.wait() == [CloseReason.USER_INITIATED]

    # The same user again, and gone again: a new lifecycle session, no second close.
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    await manager.idle()
    await manager.aclose()
    assert closes.reasons == [CloseReason.USER_INITIATED]
    closing = events(caplog, "agents.session_closing")
    assert [(r.__dict__["why"], r.__dict__["key"]) for r in closing] == [("grace_expired", "alice")]
    assert manager.linked_session is None


@pytest.mark.parametrize("reason", [REASON.PARTICIPANT_REMOVED, REASON.ROOM_DELETED])
async def test_removal_without_grace_closes_at_once(
    job: JobContext,
    driver: RoomDriver,
    agent_session: AgentSession[Any],
    caplog: pytest.LogCaptureFixture,
    reason: int,
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    closes = Closes(agent_session)
    manager = await start(job, agent_session, grace_period=LONG)
    driver.connect("alice", active=True)
    driver.disconnect("alice", reason)
    await manager.wait_for("alice", State.REMOVED, WAIT)  # long before the 30 s window
    assert await closes.wait() == [CloseReason.USER_INITIATED]
    [closing] = events(caplog, "agents.session_closing")
    assert closing.__dict__["why"] == "removed"
    assert closing.__dict__["reason"] == rtc.DisconnectReason.Name(reason)  # type: ignore[arg-type]
    await manager.aclose()


async def test_a_second_user_is_unaffected(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    closes = Closes(agent_session)
    manager = await start(job, agent_session)
    alice = driver.connect("alice", active=True)
    driver.connect("bob", active=True)
    assert linked(agent_session) is alice

    # Bob refreshes, then leaves for good: the agent keeps talking to alice.
    driver.refresh("bob")
    await manager.wait_for("bob", State.ACTIVE, WAIT)
    driver.disconnect("bob", REASON.PARTICIPANT_REMOVED)
    await manager.wait_for("bob", State.REMOVED, WAIT)
    await manager.idle()
    assert closes.reasons == []
    assert linked(agent_session) is alice
    assert manager.state_of("alice") is State.ACTIVE

    # Alice's window expires: the AgentSession closes; carol, who joined meanwhile, keeps hers.
    driver.connect("carol", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    assert await closes.wait() == [CloseReason.USER_INITIATED]
    assert manager.state_of("carol") is State.ACTIVE
    await manager.aclose()


async def test_session_started_before_for_job_is_tracked_too(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    closes = Closes(agent_session)
    driver.connect("alice", active=True)
    await agent_session.start(
        Agent(instructions="test"),
        room=driver.room,
        room_options=refresh_safe_room_options(ROOM_OPTIONS),
    )
    manager = await for_job(job, session=agent_session, config=LifecycleConfig(grace_period=SHORT))
    assert manager.linked_key == "alice"
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    assert await closes.wait() == [CloseReason.USER_INITIATED]
    await manager.aclose()


async def test_room_io_closing_on_disconnect_is_reported(
    job: JobContext,
    driver: RoomDriver,
    agent_session: AgentSession[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Started without close_on_disconnect=False, RoomIO ends the session on a refresh."""
    caplog.set_level(logging.WARNING, logger="livekit_lifecycle")
    closes = Closes(agent_session)
    manager = await for_job(job, session=agent_session, config=LifecycleConfig(grace_period=LONG))
    await agent_session.start(
        Agent(instructions="test"), room=driver.room, room_options=ROOM_OPTIONS
    )
    driver.connect("alice", active=True)
    driver.disconnect("alice")  # CLIENT_INITIATED: what a refresh sends
    assert await closes.wait() == [CloseReason.PARTICIPANT_DISCONNECTED]
    [warning] = events(caplog, "agents.closed_by_room_io")
    assert "refresh_safe_room_options" in warning.__dict__["hint"]
    await manager.aclose()


async def test_a_restarted_session_is_tracked_afresh(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    closes = Closes(agent_session)
    manager = await start(job, agent_session)
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    await closes.wait()

    await manager.start_session(Agent(instructions="again"), room_options=ROOM_OPTIONS)
    bob = driver.connect("bob", active=True)
    assert linked(agent_session) is bob and manager.linked_key == "bob"
    driver.disconnect("bob")
    await manager.wait_for("bob", State.REMOVED, WAIT)
    assert await closes.wait(2) == [CloseReason.USER_INITIATED] * 2
    await manager.aclose()


# --------------------------------------------------------------------------- shutdown


async def test_job_shutdown_closes_resources_once_in_reverse_order(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    order: list[str] = []
    tts, http = Resource("tts", order), Resource("http", order)
    cleaned: list[str] = []
    manager = await for_job(
        job,
        session=agent_session,
        config=LifecycleConfig(grace_period=LONG),
        resources=[http, None, tts],
    )
    manager.add_cleanup(lambda session: cleaned.append(session.key))
    await manager.start_session(Agent(instructions="test"), room_options=ROOM_OPTIONS)
    closes = Closes(agent_session)
    driver.connect("alice", active=True)
    driver.connect("bob")
    driver.disconnect("bob")
    await manager.wait_for("bob", State.GRACE, WAIT)

    await shut_down_job(job, driver)
    assert manager.closed and manager.sessions == {}
    assert order == ["tts", "http"] and tts.closes == http.closes == 1
    assert sorted(cleaned) == ["alice", "bob"]  # bob was cleaned when he left, not again
    assert closes.reasons == [CloseReason.USER_INITIATED]  # the runner's own close, not ours

    await asyncio.gather(*(callback("again") for callback in job._shutdown_callbacks))
    assert tts.closes == http.closes == 1 and sorted(cleaned) == ["alice", "bob"]


async def test_without_an_agent_session(job: JobContext, driver: RoomDriver) -> None:
    order: list[str] = []
    resource = Resource("tts", order)
    manager = await for_job(job, config=LifecycleConfig(grace_period=LONG), resources=[resource])
    assert manager.agent_session is None and manager.linked_session is None
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    await shut_down_job(job, driver)
    assert resource.closes == 1 and manager.sessions == {}


# --------------------------------------------------------------------------- no deaf agent


def record_job_shutdowns(job: JobContext) -> list[str]:
    """The reasons ``ctx.shutdown()`` is called with: fake_job_context has no job runner,
    so its shutdown hook (a no-op) is replaced by one that records them."""
    reasons: list[str] = []
    job._on_shutdown = reasons.append
    return reasons


async def test_the_job_ends_once_the_last_users_window_expires(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    shutdowns = record_job_shutdowns(job)
    manager = await start(job, agent_session)
    driver.connect("alice", active=True)
    driver.connect("bob", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    assert shutdowns == []  # bob is still there
    driver.disconnect("bob")
    await manager.wait_for("bob", State.REMOVED, WAIT)
    assert shutdowns == ["livekit-lifecycle: last user gone"]
    await manager.aclose()
    assert len(shutdowns) == 1


async def test_a_user_back_inside_the_window_keeps_the_job(
    job: JobContext, driver: RoomDriver, agent_session: AgentSession[Any]
) -> None:
    shutdowns = record_job_shutdowns(job)
    manager = await start(job, agent_session, grace_period=LONG)
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    driver.connect("alice", active=True)
    await manager.wait_for("alice", State.ACTIVE, WAIT)
    assert shutdowns == []
    await manager.aclose()
    assert shutdowns == []  # a shutdown of the manager is not a user leaving


async def test_the_job_ends_when_the_server_removes_the_last_user(
    job: JobContext, driver: RoomDriver
) -> None:
    shutdowns = record_job_shutdowns(job)
    manager = await for_job(job, config=LifecycleConfig(grace_period=LONG))
    driver.connect("alice", active=True)
    driver.disconnect("alice", REASON.PARTICIPANT_REMOVED)
    await manager.wait_for("alice", State.REMOVED, WAIT)
    assert shutdowns == ["livekit-lifecycle: last user gone"]
    await manager.aclose()


async def test_when_empty_keep_leaves_the_job_running(job: JobContext, driver: RoomDriver) -> None:
    shutdowns = record_job_shutdowns(job)
    manager = await for_job(job, config=LifecycleConfig(grace_period=SHORT), when_empty="keep")
    assert manager.when_empty == "keep"
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    await manager.idle()
    assert shutdowns == []
    await manager.aclose()


async def test_when_empty_delete_room_deletes_then_ends_the_job(
    job: JobContext, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    shutdowns = record_job_shutdowns(job)
    manager = await for_job(
        job, config=LifecycleConfig(grace_period=SHORT), when_empty="delete_room"
    )
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, WAIT)
    while not shutdowns:  # the deletion is a request to the server first
        await asyncio.wait_for(asyncio.shield(manager._end_task), WAIT)  # type: ignore[arg-type]
    assert shutdowns == ["livekit-lifecycle: last user gone (room deleted)"]
    [ending] = events(caplog, "agents.job_ending")
    assert ending.__dict__["action"] == "delete_room" and ending.__dict__["trigger"] == "expire"
    await manager.aclose()


async def test_bad_when_empty_and_budget_are_clear_errors(job: JobContext) -> None:
    with pytest.raises(ValueError, match="when_empty"):
        await for_job(job, when_empty="close")  # type: ignore[arg-type]
    for budget in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="shutdown_budget"):
            await for_job(job, shutdown_budget=budget)


# --------------------------------------------------------------------------- shutdown budget


async def test_a_configuration_that_cannot_fit_the_budget_is_reported_at_start(
    job: JobContext, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="livekit_lifecycle")
    fits = await for_job(job, resources=[Resource("tts", [])])  # the defaults fit
    assert fits.shutdown_budget == 10.0 and fits.config.cleanup_timeout == 5.0
    await fits.aclose()
    roomy = await for_job(job, config=LifecycleConfig(cleanup_timeout=10.0), shutdown_budget=30)
    await roomy.aclose()
    assert events(caplog, "agents.shutdown_budget_exceeded") == []

    manager = await for_job(job, config=LifecycleConfig(cleanup_timeout=10.0))
    [report] = events(caplog, "agents.shutdown_budget_exceeded")
    assert report.__dict__["shutdown_budget"] == 10.0 and report.__dict__["cleanup_timeout"] == 10.0
    assert report.__dict__["available"] == 7.0  # 10 - livekit's 2 - 1 for the store/slack
    assert "shutdown_process_timeout" in report.__dict__["hint"]
    await manager.aclose()


async def test_the_managers_shutdown_fits_inside_the_budget(
    job: JobContext, driver: RoomDriver
) -> None:
    """A cleanup that hangs at shutdown is cut so that the resources are still closed
    before the worker would kill the process."""
    order: list[str] = []
    tts = Resource("tts", order)
    budget = 5.0
    manager = await for_job(
        job,
        config=LifecycleConfig(grace_period=LONG, cleanup_timeout=30.0, shutdown_timeout=60.0),
        resources=[tts],
        shutdown_budget=budget,
    )
    hung = asyncio.Event()

    @manager.add_cleanup
    async def hangs(session: object) -> None:
        hung.set()
        await asyncio.Event().wait()

    driver.connect("alice", active=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await shut_down_job(job, driver)
    took = loop.time() - started
    assert hung.is_set() and tts.closes == 1
    assert took < budget - 2.0  # inside what livekit-agents leaves to the shutdown callbacks
    assert manager.config.shutdown_timeout == 1.0  # 5 - 2 - 1 per resource and for the slack
