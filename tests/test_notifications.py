from __future__ import annotations

from livekit_lifecycle import Session, State, Transition
from livekit_lifecycle.testing import RoomDriver
from tests.conftest import MakeManager


async def test_notifications_in_order(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = make_manager(grace_period=0.02)
    log: list[str] = []
    manager.on("created", lambda s: log.append(f"created {s.key}"))
    manager.on("state_changed", lambda s, t: log.append(f"{t.source}->{t.dest}"))
    manager.on("reconnected", lambda s: log.append(f"reconnected {s.reconnects}"))

    @manager.on("removed")
    async def removed(session: Session) -> None:  # async listeners are awaited in a task
        log.append(f"removed {session.key}")

    driver.connect("alice", active=True)
    driver.refresh("alice")
    driver.disconnect("alice")
    await manager.wait_for("alice", State.REMOVED, 2)
    await manager.idle()
    assert log == [
        "created alice",
        "connecting->active",
        "active->disconnecting",
        "disconnecting->cleaned",
        "cleaned->grace",
        "grace->reconnected",
        "reconnected 1",
        "reconnected->active",
        "active->disconnecting",
        "disconnecting->cleaned",
        "cleaned->grace",
        "grace->removed",
        "removed alice",
    ]


async def test_once_and_off(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = make_manager()
    once: list[Transition] = []
    always: list[Transition] = []

    def record(session: Session, transition: Transition) -> None:
        always.append(transition)

    manager.once("state_changed", lambda s, t: once.append(t))
    manager.on("state_changed", record)
    driver.connect("alice", active=True)
    driver.connect("bob", active=True)
    manager.off("state_changed", record)
    driver.connect("carol", active=True)
    assert len(once) == 1 and len(always) == 2
