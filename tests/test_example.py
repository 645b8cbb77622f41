"""examples/voice_agent.py: it imports cleanly, and its entrypoint runs on a real job and RoomIO.

The entrypoint runs under livekit-agents' ``fake_job_context`` on a RoomDriver room,
with a model-less AgentSession (LiveKit Inference needs the network) and a real,
never-used LiveKit Inference TTS as the resource to close.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
from examples import voice_agent
from livekit import rtc
from livekit.agents import AgentSession, CloseEvent, JobContext, inference
from livekit.agents.testing import fake_job_context

from livekit_lifecycle import State
from livekit_lifecycle.testing import RoomDriver

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "voice_agent.py"
USER = "4e3efa3d-d8fe-431e-9a1b-2c3d4e5f6a7b"
WAIT = 2.0


@pytest.fixture
def job(driver: RoomDriver) -> Iterator[JobContext]:
    with fake_job_context(room=driver.room, agent_identity="agent") as ctx:
        yield ctx


def test_import_has_no_side_effects() -> None:
    code = (
        "import logging, sys, threading, structlog\n"
        "import livekit.agents\n"
        "threads = threading.active_count()\n"
        f"sys.path.insert(0, {str(EXAMPLE.parent)!r})\n"
        "import voice_agent\n"
        "assert threading.active_count() == threads\n"
        "assert logging.getLogger().handlers == []\n"
        "assert logging.getLogger('livekit_lifecycle').handlers == []\n"
        "assert not structlog.is_configured()\n"
        "assert voice_agent.server._entrypoint_fnc is voice_agent.entrypoint\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("identity", "user_id"),
    [
        (f"user-{USER}", USER),
        (f"user-{USER.upper()}-tab-2", USER),
        ("user-4e3efa3d-d8fe-431e", None),  # truncated: not a user id
        ("alice", None),
    ],
)
def test_extract_user_id(identity: str, user_id: str | None) -> None:
    assert voice_agent.extract_user_id(identity) == user_id


async def test_the_first_user_already_in_the_room_is_identified(
    job: JobContext, driver: RoomDriver
) -> None:
    """Automatic dispatch: the user's join created the room and the job, so they are
    there before the entrypoint runs; its ``identify`` listener still sees them."""
    first = driver.connect(f"user-{USER}-tab-1", active=True)
    agent_session: AgentSession[Any] = AgentSession()
    await voice_agent.entrypoint(job, pipeline=lambda: voice_agent.Pipeline(agent_session))
    assistant = agent_session.current_agent
    assert isinstance(assistant, voice_agent.Assistant)
    manager = assistant.lifecycle
    await manager.wait_for(USER, State.ACTIVE, WAIT)
    assert agent_session.room_io.linked_participant is first
    user = manager.linked_session
    assert user is not None and user.user_id == USER
    await agent_session.aclose()
    await manager.aclose()


async def test_entrypoint_keeps_the_conversation_through_a_refresh(
    job: JobContext, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_lifecycle")
    agent_session: AgentSession[Any] = AgentSession()
    closes: list[CloseEvent] = []
    agent_session.on("close", closes.append)
    tts = inference.TTS("cartesia/sonic-3", api_key="test-key", api_secret="test-secret")

    await voice_agent.entrypoint(
        job, pipeline=lambda: voice_agent.Pipeline(session=agent_session, tts=tts)
    )
    assistant = agent_session.current_agent
    assert isinstance(assistant, voice_agent.Assistant)
    manager = assistant.lifecycle

    first = driver.connect(f"user-{USER}-tab-1", active=True)
    assert agent_session.room_io.linked_participant is first
    user = manager.linked_session
    assert user is not None and user.key == USER and user.user_id == USER
    user.data["notes"] = ["prefers short answers"]

    # The page reloads and joins with a fresh identity carrying the same user id.
    driver.disconnect(first.identity)
    await manager.wait_for(USER, State.GRACE, WAIT)
    second = driver.connect(f"user-{USER}-tab-2", active=True)
    await manager.wait_for(USER, State.ACTIVE, WAIT)
    assert agent_session.room_io.linked_participant is second
    assert manager.linked_session is user
    assert user.user_id == USER and user.data == {"notes": ["prefers short answers"]}
    assert closes == []

    # Job shutdown as the runner does it: session, room, then shutdown callbacks.
    await agent_session.aclose()
    driver.room_disconnected(rtc.DisconnectReason.CLIENT_INITIATED)
    await asyncio.gather(*(callback("test") for callback in job._shutdown_callbacks))
    assert manager.closed and manager.sessions == {}
    closed = [r.__dict__["resource"] for r in caplog.records if r.msg == "shutdown.resource_closed"]
    assert closed == ["TTS"]


async def test_the_example_runs_as_a_real_worker_without_cloud_credentials(
    tmp_path: Path,
) -> None:
    """``python examples/voice_agent.py start`` with no models: the worker and its job
    process start (importing the example as their __main__), then Ctrl+C drains it."""
    from livekit_loopback.agent_worker import AgentWorker

    worker = AgentWorker(
        EXAMPLE,
        url="ws://127.0.0.1:9",  # no server needed to start and stop
        api_key="test",
        api_secret="a-secret-long-enough-for-hs256-32b",
        log_path=tmp_path / "worker.log",
        env={voice_agent.MODELS_ENV: "none", "PYTHONPATH": str(EXAMPLE.parent)},
    )
    async with worker:
        await worker.wait_for_line(lambda r: r.get("message") == "process initialized", timeout=30)
        assert await worker.stop(timeout=30) == 0
    levels = {r.get("level") for r in worker.lines() if r.get("name") != "livekit.agents"}
    assert "ERROR" not in levels, worker.tail()


async def test_the_models_env_names_a_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(voice_agent.MODELS_ENV, "none")
    pipeline = voice_agent.pipeline_from_env()
    assert pipeline.tts is None and pipeline.session.llm is None
    await pipeline.session.aclose()
    monkeypatch.setenv(voice_agent.MODELS_ENV, "gpt-17")
    with pytest.raises(ValueError, match="VOICE_AGENT_MODELS"):
        voice_agent.pipeline_from_env()
