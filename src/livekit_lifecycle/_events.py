"""The inputs a session's queue carries: room events translated once, plus timers and shutdown."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from livekit import rtc

__all__ = ["Input", "InputKind"]


class InputKind(str, enum.Enum):
    """What an :class:`Input` reports; values are the chart's input names (``ChartInput.name``).

    A ``str`` enum: it keys the runner's per-event dispatch, and a ``str`` hashes in C.
    """

    CONNECTED = "participant_connected"
    ACTIVE = "participant_active"
    DISCONNECTED = "participant_disconnected"
    TRACK_PUBLISHED = "track_published"
    TRACK_UNPUBLISHED = "track_unpublished"
    EXPIRE = "grace_expired"
    SHUTDOWN = "shutdown"
    RESTORED = "restored"


@dataclass(slots=True)
class Input:
    """One queued input. ``sid`` is the connection it concerns (empty for timers/shutdown).

    Never changed once built; not ``frozen`` because a frozen dataclass's
    ``__init__`` costs ~3x as much, and one is built per room event.
    """

    kind: str
    """An :class:`InputKind`, or the input a chart's delayed edge names (its timer's)."""
    key: str
    sid: str = ""
    participant: rtc.RemoteParticipant | None = None
    reason: int | None = None
    track_sid: str = ""
    epoch: int = 0
    cleaned: bool = False
    """For ``restored``: the stored session's connection had already been cleaned."""
