"""A model that needs no cloud: its reply lists every user message of the chat context it got.

The only stand-in of the conversation tests: what the next reply "knows" is
what the AgentSession gave the model, so a test can see whether a job
restored the conversation before it answered. Used in-process
(``tests/stores/test_conversation.py``) and by the real worker of the recovery
tests (``recovery_agent.py``).
"""

from __future__ import annotations

from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, llm

__all__ = ["RecallLLM"]


class RecallLLM(llm.LLM[Any]):
    """Answers ``"you said: <first> | <second> | ..."``, the user messages it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> llm.LLMStream:
        return _RecallStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _RecallStream(llm.LLMStream):
    async def _run(self) -> None:
        said = [m.text_content or "" for m in self._chat_ctx.messages() if m.role == "user"]
        assert isinstance(self._llm, RecallLLM)
        self._llm.seen.append(said)
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=f"recall-{len(self._llm.seen)}",
                delta=llm.ChoiceDelta(role="assistant", content="you said: " + " | ".join(said)),
            )
        )
