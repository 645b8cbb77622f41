"""The linked AgentSession's conversation survives a crashed job (a real redis-server).

A real ``AgentSession`` on a real ``rtc.Room`` (RoomDriver), in a real
``fake_job_context`` job, writes its conversation through a real
``RedisStore``; a second job restores the session and its AgentSession
answers knowing what was said before. The model is the only stand-in:
``RecallLLM`` (tests/e2e/recall_llm.py), whose reply lists what the user said in
the chat context it got, so the test can see what the next reply knows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("livekit.agents", reason="needs livekit-agents (the 'agents' extra)")
from livekit.agents import Agent, AgentSession
from livekit.agents.testing import fake_job_context
from livekit.agents.voice.room_io import RoomOptions
from livekit.agents.voice.run_result import RunResult

from livekit_lifecycle import LifecycleConfig, State
from livekit_lifecycle._conversation import MAX_BYTES, MAX_ITEMS
from livekit_lifecycle.agents import JobLifecycleManager, for_job
from livekit_lifecycle.stores import RedisStore, SessionRecord
from livekit_lifecycle.testing import RoomDriver
from livekit_loopback.redis_server import RedisServer
from tests.e2e.recall_llm import RecallLLM

from .test_manager_store import crash

pytestmark = pytest.mark.redis

ROOM = "conversation-room"
WAIT = 20.0
# A RoomDriver room has no native handle: nothing is published, text answers stay in the session.
ROOM_OPTIONS = RoomOptions(audio_output=False, text_output=False)


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Callable[[], RedisStore]]:
    namespace = f"t{time.monotonic_ns()}"
    opened: list[RedisStore] = []

    def open_store() -> RedisStore:
        store = RedisStore.from_url(redis_server.url, namespace=namespace)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.aclose()


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def stored(store: RedisStore, key: str) -> SessionRecord | None:
    return {r.key: r for r in await store.load(ROOM)}.get(key)


async def stored_conversation(
    store: RedisStore, key: str, done: Callable[[list[dict[str, Any]]], bool]
) -> dict[str, Any]:
    """The conversation stored with ``key`` once its chat items are ``done``."""
    deadline = time.monotonic() + WAIT
    while True:
        record = await stored(store, key)
        conversation = None if record is None else record.conversation
        if conversation is not None and done(conversation["items"]):
            return conversation
        assert time.monotonic() < deadline, f"{key}'s conversation never got there"
        await asyncio.sleep(0.02)


def said(items: list[dict[str, Any]]) -> list[str]:
    """The user's messages among stored chat items."""
    return ["".join(i["content"]) for i in items if i["type"] == "message" and i["role"] == "user"]


def answered(*user: str) -> Callable[[list[dict[str, Any]]], bool]:
    """Done once the user said exactly ``user`` and the last message is the agent's answer."""

    def done(items: list[dict[str, Any]]) -> bool:
        messages = [i for i in items if i["type"] == "message"]
        return said(items) == list(user) and messages[-1]["role"] == "assistant"

    return done


def user_texts(session: AgentSession[Any]) -> list[str]:
    return [m.text_content or "" for m in session.history.messages() if m.role == "user"]


async def start_job(
    driver: RoomDriver, store: RedisStore, model: RecallLLM, **session_options: Any
) -> tuple[JobLifecycleManager, AgentSession[Any]]:
    session: AgentSession[Any] = AgentSession(llm=model, **session_options)
    with fake_job_context(room=driver.room, agent_identity="agent") as ctx:
        manager = await for_job(
            ctx, session=session, config=LifecycleConfig(store=store, grace_period=30.0)
        )
        await manager.start_session(Agent(instructions="be brief"), room_options=ROOM_OPTIONS)
    return manager, session


async def test_a_new_job_answers_knowing_the_conversation_before_the_crash(
    stores: Callable[[], RedisStore],
) -> None:
    first_model, second_model = RecallLLM(), RecallLLM()
    async with RoomDriver(ROOM) as first_room:
        alice = first_room.connect("alice", active=True)
        first, first_session = await start_job(
            first_room, stores(), first_model, userdata={"topic": "cats", "turns": 2}
        )
        await until(lambda: first.linked_key == "alice", "the link to alice")
        first.set_user_id("alice", "u-alice")
        await first_session.run(user_input="my name is Zed")
        await first_session.run(user_input="I like cats")
        assert first_model.seen[-1] == ["my name is Zed", "I like cats"]
        conversation = await stored_conversation(
            stores(), "alice", answered("my name is Zed", "I like cats")
        )
        assert conversation["userdata"] == {"topic": "cats", "turns": 2}
        crash(first.manager)

    async with RoomDriver(ROOM) as second_room:
        second_room.connect("alice", sid=alice.sid, active=True)  # never left
        second, second_session = await start_job(second_room, stores(), second_model)
        restored = second.get("alice")
        assert restored is not None and restored.state is State.ACTIVE
        assert restored.user_id == "u-alice"
        assert user_texts(second_session) == ["my name is Zed", "I like cats"]
        assert second_session.userdata == {"topic": "cats", "turns": 2}

        result: RunResult[None] = await second_session.run(user_input="what is my name?")
        # What the model got: the instructions, then the conversation before the crash.
        assert second_model.seen == [["my name is Zed", "I like cats", "what is my name?"]]
        replies = [e.item.text_content for e in result.events if e.type == "message"]
        assert "you said: my name is Zed | I like cats | what is my name?" in replies
        instructions = second_session.current_agent.chat_ctx.items[0]
        assert instructions.type == "message" and instructions.role == "system"
        assert instructions.text_content == "be brief"

        # The new job goes on writing the same conversation, now longer.
        await stored_conversation(
            stores(), "alice", answered("my name is Zed", "I like cats", "what is my name?")
        )
        assert (await stored(stores(), "alice")).owner == second.manager._persist.owner  # type: ignore[union-attr]
        await second.aclose()
        await second_session.aclose()
    await first_session.aclose()


async def test_the_stored_conversation_is_bounded_and_only_json_userdata_is_kept(
    stores: Callable[[], RedisStore], caplog: pytest.LogCaptureFixture
) -> None:
    model = RecallLLM()
    async with RoomDriver(ROOM) as room:
        room.connect("alice", active=True)
        manager, session = await start_job(room, stores(), model, userdata=object())
        await until(lambda: manager.linked_key == "alice", "the link to alice")
        big = "x" * 3000
        for turn in range(MAX_ITEMS // 2 + 5):
            session.history.add_message(role="user", content=f"{turn} {big}")
            session.history.add_message(role="assistant", content="ok")
        await session.run(user_input="last")
        items = (
            await stored_conversation(
                stores(),
                "alice",
                lambda items: said(items)[-1:] == ["last"] and items[-1].get("role") == "assistant",
            )
        )["items"]
        record = await stored(stores(), "alice")
        assert record is not None and record.conversation is not None
        assert "userdata" not in record.conversation
        assert len(items) <= MAX_ITEMS
        assert sum(len(str(i)) for i in items) <= MAX_BYTES * 1.2
        messages = [i for i in items if i["type"] == "message"]
        assert messages[-1]["role"] == "assistant" and messages[-2]["content"] == ["last"]
        assert any(r.msg == "agents.userdata_not_stored" for r in caplog.records)
        await manager.aclose()
        await session.aclose()


async def test_without_a_durable_store_nothing_is_kept_and_start_does_not_wait(
    redis_server: RedisServer,
) -> None:
    async with RoomDriver(ROOM) as room:
        room.connect("alice", active=True)
        session: AgentSession[Any] = AgentSession(llm=RecallLLM())
        with fake_job_context(room=room.room, agent_identity="agent") as ctx:
            manager = await for_job(ctx, session=session)
            started = time.monotonic()
            await manager.start_session(Agent(instructions="be brief"), room_options=ROOM_OPTIONS)
        assert time.monotonic() - started < 1.0
        assert await manager.restore_conversation(Agent(instructions="x")) is False
        await manager.aclose()
        await session.aclose()
