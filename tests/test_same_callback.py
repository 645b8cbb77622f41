"""One rule for "is this callback already registered?" (docs/concepts.md): bound methods
and equal partials are the same callback however many times they are built; a lambda is
only itself. Exercised through the manager's API on a real room."""

from __future__ import annotations

import functools
import logging

import pytest

from livekit_lifecycle import Session, State
from livekit_lifecycle.testing import RoomDriver
from tests.conftest import MakeManager

WAIT = 2.0


class App:
    def __init__(self) -> None:
        self.cleaned: list[str] = []
        self.created: list[str] = []
        self.closes = 0

    def cleanup(self, session: Session) -> None:
        self.cleaned.append(session.key)

    def tagged_cleanup(self, tag: str, session: Session) -> None:
        self.cleaned.append(f"{tag}:{session.key}")

    def keyword_cleanup(self, session: Session, *, tag: str) -> None:
        self.cleaned.append(f"{tag}:{session.key}")

    def on_created(self, session: Session) -> None:
        self.created.append(session.key)

    async def aclose(self) -> None:
        self.closes += 1


async def test_a_bound_method_added_twice_cleans_once(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    app = App()
    manager = make_manager(grace_period=30.0)
    manager.add_cleanup(app.cleanup)
    manager.add_cleanup(app.cleanup)  # a new bound-method object, the same callback
    manager.add_cleanup(functools.partial(app.tagged_cleanup, "p"))
    manager.add_cleanup(functools.partial(app.tagged_cleanup, "p"))
    manager.add_cleanup(functools.partial(app.keyword_cleanup, tag="k"))
    manager.add_cleanup(functools.partial(app.keyword_cleanup, tag="k"))
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    assert app.cleaned == ["alice", "p:alice", "k:alice"]
    assert [r.msg for r in caplog.records].count("cleanup.already_added") == 3


async def test_different_partials_and_lambdas_are_different_callbacks(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    app = App()
    manager = make_manager(grace_period=30.0)
    manager.add_cleanup(functools.partial(app.tagged_cleanup, "a"))
    manager.add_cleanup(functools.partial(app.tagged_cleanup, "b"))
    manager.add_cleanup(functools.partial(App().tagged_cleanup, "a"))  # another object's method
    for _ in range(2):  # a lambda is a new function each time it is evaluated
        manager.add_cleanup(lambda session: app.cleaned.append(f"λ:{session.key}"))
    one = manager.add_cleanup(lambda session: app.cleaned.append(f"one:{session.key}"))
    manager.add_cleanup(one)  # but the same lambda object is one callback
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, WAIT)
    assert app.cleaned == ["a:alice", "b:alice", "λ:alice", "λ:alice", "one:alice"]


async def test_a_resource_added_twice_closes_once(make_manager: MakeManager) -> None:
    app, other = App(), App()
    manager = make_manager(attach=False)
    manager.add_resource(app, name="tts")
    manager.add_resource(app.aclose)  # what closes it: the same
    manager.add_resource(functools.partial(app.aclose))
    manager.add_resource(app)
    manager.add_resource(other)
    await manager.aclose()
    assert (app.closes, other.closes) == (2, 1)  # the partial is a closer of its own


async def test_listeners_on_and_off_by_the_same_rule(
    make_manager: MakeManager, driver: RoomDriver
) -> None:
    app = App()
    manager = make_manager()
    manager.on("created", app.on_created)
    manager.on("created", app.on_created)
    manager.on("created", functools.partial(App.on_created, app))
    manager.on("created", functools.partial(App.on_created, app))
    driver.connect("alice")
    await manager.wait_for("alice", State.CONNECTING, WAIT)
    assert app.created == ["alice", "alice"]  # the method once, the partial once

    manager.off("created", app.on_created)  # yet another bound-method object
    manager.off("created", functools.partial(App.on_created, app))
    driver.connect("bob")
    await manager.wait_for("bob", State.CONNECTING, WAIT)
    assert app.created == ["alice", "alice"]
