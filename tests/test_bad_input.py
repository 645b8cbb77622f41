"""Bad input gets a clear error or a logged no-op, never a crash and never lost state."""

from __future__ import annotations

import asyncio

import pytest
from livekit import rtc

from livekit_lifecycle import LifecycleConfig, LifecycleManager, State
from livekit_lifecycle.session import reason_name
from livekit_lifecycle.testing import RoomDriver
from tests.conftest import MakeManager

KIND = rtc.ParticipantKind


async def test_empty_identity_is_rejected_and_logged(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager()
    driver.connect("")
    assert manager.sessions == {} and manager.stats["rejected_input"] == 1
    (record,) = [r for r in caplog.records if r.msg == "event.rejected"]
    assert "empty" in record.__dict__["why"] and record.levelname == "WARNING"
    driver.connect("alice", active=True)  # the manager still works
    assert manager.state_of("alice") is State.ACTIVE


@pytest.mark.parametrize(
    "kind",
    [KIND.PARTICIPANT_KIND_AGENT, KIND.PARTICIPANT_KIND_EGRESS, KIND.PARTICIPANT_KIND_INGRESS],
)
async def test_untracked_kinds_are_ignored(
    make_manager: MakeManager, driver: RoomDriver, kind: int
) -> None:
    manager = make_manager()
    driver.connect("bot", kind=kind, active=True)
    driver.disconnect("bot")
    assert manager.sessions == {} and manager.stats["ignored_kind"] == 3


async def test_sip_and_connector_participants_are_tracked(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager()
    driver.connect("phone", kind=KIND.PARTICIPANT_KIND_SIP, active=True)
    driver.connect("bridge", kind=KIND.PARTICIPANT_KIND_CONNECTOR)
    assert manager.state_of("phone") is State.ACTIVE
    assert manager.state_of("bridge") is State.CONNECTING


async def test_events_after_detach_change_nothing(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager()
    driver.connect("alice", active=True)
    manager.detach()
    manager.detach()  # idempotent
    driver.disconnect("alice")
    driver.connect("bob")
    assert manager.state_of("alice") is State.ACTIVE and manager.get("bob") is None
    assert manager.stats["events"] == 2  # connect + active, before detach


async def test_attach_twice_raises(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = make_manager()
    with pytest.raises(RuntimeError, match="already attached"):
        manager.attach(driver.room)
    with pytest.raises(TypeError, match=r"livekit\.rtc\.Room"):
        LifecycleManager().attach("room")  # type: ignore[arg-type]


async def test_session_key_that_raises_is_a_logged_no_op(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    def key(participant: rtc.RemoteParticipant) -> str:
        return participant.attributes["user"]

    manager = make_manager(session_key=key)
    driver.connect("no-attribute")
    driver.connect("alice", attributes={"user": "u-1"}, active=True)
    assert list(manager.sessions) == ["u-1"] and manager.stats["rejected_input"] == 1
    why = [r.__dict__["why"] for r in caplog.records if r.msg == "event.rejected"]
    assert why and "KeyError" in why[0]


async def test_unknown_participants_are_ignored(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    driver.connect("before-attach")
    participant = driver.disconnect("before-attach")
    manager = make_manager()
    driver.redeliver_disconnect(participant)
    assert manager.sessions == {} and manager.stats["ignored_stale"] == 1


async def test_api_misuse_raises_clear_errors(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager()
    with pytest.raises(KeyError, match="no live session"):
        manager.set_user_id("nobody", "u")
    driver.connect("alice")
    with pytest.raises(TypeError, match="user_id must be a str"):
        manager.set_user_id("alice", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        manager.add_cleanup("not a function")  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"no aclose\(\) or close\(\)"):
        manager.add_resource(object())
    with pytest.raises(ValueError, match="unknown event"):
        manager.on("participant_connected", print)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="LifecycleConfig"):
        LifecycleManager({"grace_period": 1})  # type: ignore[arg-type]
    session = manager.get("alice")
    assert session is not None
    assert manager.set_user_id(session.sid, "by-sid") is session and session.user_id == "by-sid"


async def test_listener_that_raises_does_not_disturb_the_lifecycle(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager(grace_period=30, cleanup_timeout=0.05)
    seen: list[str] = []

    def broken(session: object, transition: object) -> None:
        raise ValueError("listener bug")

    async def hanging(session: object, transition: object) -> None:
        await asyncio.Event().wait()

    manager.on("state_changed", broken)
    manager.on("state_changed", hanging)
    manager.on("state_changed", lambda s, t: seen.append(t.trigger))
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, 2)
    await manager.idle()
    assert seen == ["activate", "disconnect", "cleanup_done", "hold"]
    assert manager.stats["callback_errors"] == 4 and manager.stats["callback_timeouts"] == 4
    failures = [r for r in caplog.records if r.msg == "listener.failed"]
    assert len(failures) == 4 and failures[0].__dict__["key"] == "alice"


async def test_blocking_user_code_in_a_connect_is_isolated(driver: RoomDriver) -> None:
    manager = LifecycleManager(LifecycleConfig(grace_period=30))
    manager.on("created", lambda s: 1 / 0)
    manager.attach(driver.room)
    driver.connect("alice", active=True)
    assert manager.state_of("alice") is State.ACTIVE
    await manager.aclose()


def test_disconnect_reasons_are_named_and_unknown_ones_kept() -> None:
    # The SDK's protobuf rejects unknown reasons today; a newer server may still send one.
    assert reason_name(rtc.DisconnectReason.CLIENT_INITIATED) == "CLIENT_INITIATED"
    assert reason_name(999) == "999"
    assert reason_name(None) is None


async def test_a_listener_that_emits_room_events_is_processed_in_order(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    manager.once("created", lambda session: driver.activate(session.identity))
    driver.connect("alice")
    assert manager.state_of("alice") is State.ACTIVE
