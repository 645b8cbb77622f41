from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from livekit_lifecycle import State, configure_logging
from livekit_lifecycle.testing import RoomDriver
from tests.conftest import MakeManager


def test_import_configures_nothing() -> None:
    code = (
        "import logging, structlog, livekit_lifecycle\n"
        "assert logging.getLogger('livekit_lifecycle').handlers == []\n"
        "assert logging.getLogger().handlers == []\n"
        "assert not structlog.is_configured()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_records_carry_structured_context(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="livekit_lifecycle")
    manager = make_manager(grace_period=30)
    participant = driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, 2)
    transitions = [r for r in caplog.records if r.msg == "session.transition"]
    assert [(r.__dict__["from_state"], r.__dict__["to_state"]) for r in transitions] == [
        ("connecting", "active"),
        ("active", "disconnecting"),
        ("disconnecting", "cleaned"),
        ("cleaned", "grace"),
    ]
    first = transitions[1]
    assert first.__dict__["room"] == "test-room" and first.__dict__["key"] == "alice"
    assert first.__dict__["sid"] == participant.sid and first.__dict__["category"] == "disconnect"
    assert first.__dict__["trigger"] == "disconnect"
    categories = {r.__dict__.get("category") for r in caplog.records}
    assert {"handlers", "connect", "disconnect", "cleanup"} <= categories


async def test_configure_logging_json(make_manager: MakeManager, driver: RoomDriver) -> None:
    stream = io.StringIO()
    handler = configure_logging(json=True)
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        assert configure_logging(json=True) is not handler  # idempotent: replaced, not added
        logger = logging.getLogger("livekit_lifecycle")
        marked = [h for h in logger.handlers if getattr(h, "_livekit_lifecycle_handler", False)]
        assert len(marked) == 1
        marked[0].setStream(stream)  # type: ignore[attr-defined]
        make_manager()
        driver.connect("alice", active=True)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        transition = next(line for line in lines if line["event"] == "session.transition")
        assert transition["key"] == "alice" and transition["to_state"] == "active"
        assert transition["level"] == "info" and "timestamp" in transition
    finally:
        logger = logging.getLogger("livekit_lifecycle")
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(logging.NOTSET)
