"""Shared fixtures: real rtc.Room objects driven through the SDK's event translation."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session
from livekit_lifecycle.invariants import InvariantChecker, check_closed
from livekit_lifecycle.testing import RoomDriver
from livekit_loopback.pytest_plugin import OptionalPackage, skip_missing

MakeManager = Callable[..., LifecycleManager]

GRAPHVIZ = OptionalPackage(
    "graphviz", ("graphviz", "fonts-liberation2"), require_env="LIVEKIT_LIFECYCLE_REQUIRE_GRAPHVIZ"
)
"""Graphviz's ``dot`` lays out the SVG/PNG charts; the committed SVG used the Liberation fonts."""


@pytest.fixture
def graphviz(request: pytest.FixtureRequest) -> None:
    """Skips the test (one line naming Graphviz) where ``dot`` is not installed."""
    if shutil.which("dot") is None:
        skip_missing(request, [GRAPHVIZ], "Graphviz's `dot` is not on PATH")


@pytest.fixture
async def driver() -> AsyncIterator[RoomDriver]:
    async with RoomDriver("test-room") as room_driver:
        yield room_driver


@pytest.fixture
async def make_manager(driver: RoomDriver) -> AsyncIterator[MakeManager]:
    """Builds managers attached to ``driver.room``; closes them, and checks the
    lifecycle invariants after every transition of every test that uses them."""
    managers: list[LifecycleManager] = []
    checkers: list[InvariantChecker] = []

    def make(attach: bool = True, **config: Any) -> LifecycleManager:
        manager = LifecycleManager(LifecycleConfig(**config))
        checkers.append(InvariantChecker(manager))
        if attach:
            manager.attach(driver.room)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.aclose()
        assert check_closed(manager) == []
    for checker in checkers:
        checker.raise_if_violated()


def gate_cleanup(manager: LifecycleManager, *keys: str) -> asyncio.Event:
    """Add a cleanup that blocks (for ``keys``, or every session) until the event is set."""
    release = asyncio.Event()

    async def gated(session: Session) -> None:
        if not keys or session.key in keys:
            await release.wait()

    manager.add_cleanup(gated)
    return release


def path(session: Session) -> list[tuple[str, str, str]]:
    """A session's history as (source, trigger, dest) value triples."""
    return [(t.source.value, t.trigger, t.dest.value) for t in session.history]


# Hypothesis budgets (tests/test_properties.py): a fixed, derandomized budget by
# default so CI is deterministic; LIVEKIT_LIFECYCLE_HYPOTHESIS_PROFILE=long for more.
import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=150,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=3000,
    stateful_step_count=80,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("LIVEKIT_LIFECYCLE_HYPOTHESIS_PROFILE", "ci"))
