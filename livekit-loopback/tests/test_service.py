"""Room rules the real SDK cannot be made to hit on cue: late and refused resumes, timers.

These drive the server's RoomService directly. The signalling links are a
recording implementation of the server's own ``SignalLink`` protocol (what
a WebSocket does for the room: queue messages, then close).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

pytest.importorskip("aiortc", reason="the loopback server needs the 'testing' extra")

from livekit.protocol import models
from livekit.protocol import rtc as signal

from livekit_loopback._service import RoomService, ServiceSettings
from livekit_loopback._signal import JoinParams
from livekit_loopback._tokens import TokenAuthority

REASON = models.DisconnectReason
ROOM = "room"


class RecordingLink:
    """Keeps what the room sends; ``close`` marks it closed like a flushed WebSocket."""

    def __init__(self) -> None:
        self.sent: list[signal.SignalResponse] = []
        self.closed = False
        self.aborted = False

    def send(self, message: signal.SignalResponse) -> None:
        assert not self.closed, "sent on a closed link"
        self.sent.append(message)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    async def wait_closed(self) -> None:
        return None

    def kinds(self) -> list[str]:
        return [str(m.WhichOneof("message")) for m in self.sent]

    def updates(self) -> list[models.ParticipantInfo]:
        return [p for m in self.sent if m.HasField("update") for p in m.update.participants]


@pytest.fixture
async def service() -> AsyncIterator[RoomService]:
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks.add(task)
        return task

    rooms = RoomService(
        ServiceSettings(
            leave_timeout=0.05,
            lost_signal_reason=REASON.SIGNAL_CLOSE,
            ping_interval=5,
            ping_timeout=15,
        ),
        spawn,
    )
    yield rooms
    await rooms.shutdown()
    await asyncio.gather(*tasks)


AUTHORITY = TokenAuthority("key", "s" * 32)


def _join(rooms: RoomService, identity: str) -> tuple[Any, RecordingLink]:
    link = RecordingLink()
    grant = AUTHORITY.verify_join(AUTHORITY.issue(identity, ROOM))
    params = JoinParams(
        single_pc=True,
        reconnect=False,
        participant_sid="",
        client_protocol=0,
        publisher_offer=None,
        request=None,
    )
    return rooms.join(grant, params, link), link


def _resume(rooms: RoomService, identity: str, sid: str) -> tuple[Any, RecordingLink]:
    link = RecordingLink()
    grant = AUTHORITY.verify_join(AUTHORITY.issue(identity, ROOM))
    params = JoinParams(
        single_pc=True,
        reconnect=True,
        participant_sid=sid,
        client_protocol=0,
        publisher_offer=None,
        request=None,
    )
    return rooms.resume(grant, params, link), link


async def test_resume_inside_the_window_keeps_the_participant(service: RoomService) -> None:
    _, observer_link = _join(service, "observer")
    alice, first_link = _join(service, "alice")
    seen_by_observer = len(observer_link.sent)

    service.link_lost(alice, first_link)
    resumed, link = _resume(service, "alice", alice.sid)

    # The leave timer is gone (not merely pending), and the room heard nothing.
    assert resumed is alice and alice.link is link and alice.lost_timer is None
    assert link.kinds() == ["reconnect", "update"]
    assert [p.identity for p in link.updates()] == ["alice", "observer"]  # a full snapshot
    assert not alice.removed and len(observer_link.sent) == seen_by_observer


async def test_late_resume_is_told_to_rejoin(service: RoomService) -> None:
    _, observer_link = _join(service, "observer")
    alice, first_link = _join(service, "alice")

    service.link_lost(alice, first_link)
    await service.wait_until(lambda: alice.removed, timeout=2.0)
    resumed, link = _resume(service, "alice", alice.sid)

    assert resumed is None and link.closed
    leave = link.sent[-1].leave
    assert (leave.action, leave.reason) == (signal.LeaveRequest.RECONNECT, REASON.STATE_MISMATCH)
    gone = observer_link.updates()[-1]
    assert (gone.sid, gone.state, gone.disconnect_reason) == (
        alice.sid,
        models.ParticipantInfo.DISCONNECTED,
        REASON.SIGNAL_CLOSE,
    )


async def test_dropped_connection_is_refused_for_good(service: RoomService) -> None:
    alice, link = _join(service, "alice")

    service.drop_signal(alice, timeout=10.0)
    assert link.aborted and alice.link is None and not alice.removed
    resumed, retry = _resume(service, "alice", alice.sid)

    assert resumed is None and retry.closed
    leave = retry.sent[-1].leave
    assert (leave.action, leave.reason) == (signal.LeaveRequest.DISCONNECT, REASON.SIGNAL_CLOSE)
    assert not alice.removed  # still waiting out its leave timeout


async def test_duplicate_identity_tells_the_old_client_first(service: RoomService) -> None:
    _, observer_link = _join(service, "observer")
    old, old_link = _join(service, "alice")
    new, _ = _join(service, "alice")

    assert old.removed and old_link.closed
    leave = old_link.sent[-1].leave
    assert (leave.action, leave.reason) == (
        signal.LeaveRequest.DISCONNECT,
        REASON.DUPLICATE_IDENTITY,
    )
    announced = [(p.sid, p.state) for p in observer_link.updates()]
    assert announced[-2:] == [
        (old.sid, models.ParticipantInfo.DISCONNECTED),
        (new.sid, models.ParticipantInfo.JOINED),
    ]
