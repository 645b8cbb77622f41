"""livekit-lifecycle: an explicit state machine per LiveKit participant.

Quick start::

    from livekit_lifecycle import LifecycleConfig, LifecycleManager, State

    manager = LifecycleManager(LifecycleConfig(grace_period=30.0))
    manager.attach(ctx.room)
    manager.add_cleanup(save_transcript)
    manager.add_resource(tts)
    ...
    await manager.aclose()
"""

from __future__ import annotations

from ._version import __version__ as __version__
from .config import DEFAULT_KINDS, DEFAULT_NO_GRACE_REASONS, LifecycleConfig, SessionKey
from .log import configure_logging
from .manager import CleanupCallback, LifecycleManager
from .render import render_statechart
from .session import Session, Transition
from .statechart import PARTICIPANT_CHART, State

__all__ = [
    "DEFAULT_KINDS",
    "DEFAULT_NO_GRACE_REASONS",
    "PARTICIPANT_CHART",
    "CleanupCallback",
    "LifecycleConfig",
    "LifecycleManager",
    "Session",
    "SessionKey",
    "State",
    "Transition",
    "configure_logging",
    "render_statechart",
]
