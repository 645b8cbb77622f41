"""The session runtime's seams for a session store (see ``_runtime`` and ``_cleanup``)."""

from __future__ import annotations

from collections.abc import Sequence

from livekit_lifecycle import Session, State
from livekit_lifecycle._cleanup import ClaimAnswer
from livekit_lifecycle.testing import RoomDriver
from tests.conftest import MakeManager

WAIT = 2.0


async def test_a_transition_hook_sees_every_change_of_state(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    seen: list[tuple[str, State]] = []
    manager._runtime.add_transition_hook(lambda session: seen.append((session.key, session.state)))
    driver.connect("alice", active=True)
    driver.publish_track("alice")  # internal edge: no change of state, no call
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    assert seen == [
        ("alice", State.ACTIVE),
        ("alice", State.DISCONNECTING),
        ("alice", State.CLEANED),
        ("alice", State.GRACE),
    ]


async def test_a_cleanup_claim_decides_whether_callbacks_run_here(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    manager = make_manager(grace_period=30)
    cleaned: list[str] = []
    manager.add_cleanup(lambda session: cleaned.append(session.key))
    claimed: list[str] = []
    batches: list[int] = []

    async def claims(sessions: Sequence[Session], answer: ClaimAnswer) -> None:
        batches.append(len(sessions))
        for session in sessions:
            claimed.append(session.key)
            if session.key == "carol":
                raise RuntimeError("store down")  # logged; the cleanup runs here
            answer(session, session.key != "bob", None)  # bob's already ran elsewhere

    manager._cleanup.use_claims(claims, manager._runtime.set_cleanup_claim, manager._runtime.resume)
    for name in ("alice", "bob", "carol"):
        driver.connect(name, active=True)
        driver.disconnect(name)
    for name in ("alice", "bob", "carol"):
        session = await manager.wait_for(name, State.GRACE, WAIT)
        assert session.cleanups == 1
    assert claimed == ["alice", "bob", "carol"]
    assert batches == [3]  # due in the same turn: claimed together, by one task
    assert cleaned == ["alice", "carol"]
    assert manager.stats["internal_errors"] == 1
    manager._cleanup.use_claims(None)  # unset: the callbacks run inline again, no claim asked
    driver.connect("dave", active=True)
    driver.disconnect("dave")
    await manager.wait_for("dave", State.GRACE, WAIT)
    assert claimed == ["alice", "bob", "carol"] and cleaned == ["alice", "carol", "dave"]
