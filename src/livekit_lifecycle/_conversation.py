"""The linked AgentSession's conversation, written with its user's session, restored after a crash.

Only built by :class:`~livekit_lifecycle.agents.JobLifecycleManager` when the
manager has a durable store and an ``AgentSession``. The conversation (the
AgentSession's chat history and its userdata when that is JSON) rides in the
linked user's :class:`~livekit_lifecycle.stores.SessionRecord`, written behind
like the rest of the session; a new job that restores the session gives it
back to its own AgentSession before that starts, so the agent's next reply
knows what was said before the crash.

Bounded: the last :data:`MAX_ITEMS` items of the history, at most
:data:`MAX_BYTES` of JSON (oldest items dropped first), images and audio left
out; userdata only when it is JSON and at most :data:`MAX_USERDATA_BYTES`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from livekit.agents import Agent, AgentSession, ConversationItemAddedEvent, llm

from .log import LOGGER_NAME, get_logger
from .statechart import State
from .stores import check_json

if TYPE_CHECKING:
    from ._persistence import ConversationStore
    from .agents import JobLifecycleManager

__all__ = ["MAX_BYTES", "MAX_ITEMS", "MAX_USERDATA_BYTES", "ConversationKeeper"]

MAX_ITEMS = 100
"""Chat items kept (the latest): enough for a voice conversation's context, small to write."""
MAX_BYTES = 64 * 1024
"""JSON bytes of the kept history at most: the oldest items go first past it."""
MAX_USERDATA_BYTES = 16 * 1024
"""JSON bytes of the AgentSession's userdata at most: larger userdata is not stored (logged)."""
_RESTORE_WAIT = 6.0
"""Seconds start_session waits for the stored sessions (the load's own bound is 5 s)."""
_VERSION = 1


class ConversationKeeper:
    """Keeps the linked user's conversation in the store and gives it back (see the module doc)."""

    def __init__(
        self, manager: JobLifecycleManager, persist: ConversationStore, session: AgentSession[Any]
    ) -> None:
        self._manager = manager
        self._persist = persist
        self._session = session
        self._scheduled = False
        self._userdata_refused = False
        self._log = get_logger()
        self._stdlog = logging.getLogger(LOGGER_NAME)
        self.restored_key: str | None = None
        """Session key whose conversation was given back to the AgentSession, if any."""
        session.on("conversation_item_added", self._on_item)

    # ------------------------------------------------------------------ writing

    def _on_item(self, _event: ConversationItemAddedEvent) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        # After the emitter's other listeners: one snapshot for items added together.
        asyncio.get_running_loop().call_soon(self.save)

    def save(self) -> None:
        """Write the AgentSession's conversation with the linked user's session now."""
        self._scheduled = False
        manager = self._manager
        if manager.closed:
            return
        key = manager.linked_key
        if key is None or manager.get(key) is None:
            return  # nobody linked yet: the next item writes the whole history
        try:
            snapshot = self.snapshot()
        except Exception as exc:  # a user's odd item must not break the job
            self._log.warning(
                "agents.conversation_not_stored",
                category="store",
                room=manager.job.room.name,
                key=key,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        self._persist.set_conversation(key, snapshot)

    def snapshot(self) -> dict[str, Any]:
        """The bounded JSON form of the AgentSession's conversation (see the module doc)."""
        history = self._session.history.copy()
        history.truncate(max_items=MAX_ITEMS)
        items: list[Any] = history.to_dict(
            exclude_image=True,
            exclude_audio=True,
            exclude_timestamp=False,
            exclude_metrics=True,
            exclude_config_update=True,  # the new job's agent brings its own configuration
        )["items"]
        sizes = [len(json.dumps(item, separators=(",", ":"))) for item in items]
        total = sum(sizes)
        first = 0
        while total > MAX_BYTES and first < len(items):
            total -= sizes[first]
            first += 1
        # A history never starts with a tool's output (as ChatContext.truncate keeps it).
        while first < len(items) and items[first].get("type") in (
            "function_call",
            "function_call_output",
        ):
            first += 1
        snapshot: dict[str, Any] = {
            "v": _VERSION,
            "items": items[first:],
            "saved_at": time.time(),
        }
        userdata = self._userdata()
        if userdata is not None:
            snapshot["userdata"] = userdata
        return snapshot

    def _userdata(self) -> Any:
        userdata = self._session._userdata  # the public property raises when unset
        if userdata is None:
            return None
        try:
            check_json(userdata, "AgentSession.userdata")
            size = len(json.dumps(userdata, separators=(",", ":")))
            if size > MAX_USERDATA_BYTES:
                raise TypeError(f"AgentSession.userdata is {size} bytes of JSON")
        except TypeError as exc:
            if not self._userdata_refused:
                self._userdata_refused = True
                self._log.warning(
                    "agents.userdata_not_stored",
                    category="store",
                    room=self._manager.job.room.name,
                    reason=str(exc),
                    limit=MAX_USERDATA_BYTES,
                )
            return None
        return userdata

    # ------------------------------------------------------------------ restoring

    async def restore(self, agent: Agent, *, participant_identity: str | None = None) -> bool:
        """Give a restored conversation back to ``agent`` and the AgentSession, before it starts.

        Waits for the stored sessions first (bounded). Picks the conversation of
        ``participant_identity``'s session when given, else of the restored
        session still in the room (or in its grace window) saved last.
        """
        await self._persist.restored(_RESTORE_WAIT)
        key = self._pick(participant_identity)
        if key is None:
            return False
        stored = self._persist.conversations.get(key)
        if stored is None:
            return False
        try:
            restored = llm.ChatContext.from_dict({"items": stored.get("items", [])})
        except Exception as exc:  # written by another version, or edited by hand
            self._log.warning(
                "agents.conversation_unreadable",
                category="store",
                room=self._manager.job.room.name,
                key=key,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        # The agent keeps its own instructions; the history goes after them, in order.
        chat_ctx = agent.chat_ctx.copy()
        chat_ctx.merge(restored, exclude_instructions=True)
        await agent.update_chat_ctx(chat_ctx)
        self._session.history.merge(restored, exclude_instructions=True)
        userdata = stored.get("userdata")
        if userdata is not None and self._session._userdata is None:
            self._session.userdata = userdata
        self.restored_key = key
        if self._stdlog.isEnabledFor(logging.INFO):
            self._log.info(
                "agents.conversation_restored",
                category="session",
                room=self._manager.job.room.name,
                key=key,
                items=len(restored.items),
                userdata=userdata is not None,
            )
        return True

    def _pick(self, participant_identity: str | None) -> str | None:
        manager = self._manager
        conversations = self._persist.conversations
        if participant_identity is not None:
            for key in conversations:
                session = manager.get(key)
                if session is not None and session.identity == participant_identity:
                    return key
            return None
        candidates = [
            key
            for key in conversations
            if (session := manager.get(key)) is not None and session.state is not State.REMOVED
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda k: _saved_at(conversations[k]))


def _saved_at(conversation: dict[str, Any]) -> float:
    saved = conversation.get("saved_at")
    return float(saved) if isinstance(saved, (int, float)) else 0.0
