"""A voice agent whose conversation survives a browser refresh (livekit-agents 1.8).

Without the lifecycle manager, a refresh ends the agent session: the page
leaves with ``CLIENT_INITIATED`` and RoomIO closes the ``AgentSession``. Here
the same ``AgentSession`` keeps running for ``grace_period`` seconds; when the
user comes back (same identity, or a new identity carrying the same user id),
RoomIO is linked to the new connection and the user's id and data are still
there. If the user does not come back, the session is closed, once, and the
TTS is closed when the job shuts down.

Run it against a LiveKit server (the models are LiveKit Inference, so use a
LiveKit Cloud project; swap ``inference_pipeline`` for plugins otherwise)::

    pip install 'livekit-lifecycle[agents]'
    export LIVEKIT_URL=wss://<project>.livekit.cloud
    export LIVEKIT_API_KEY=<key> LIVEKIT_API_SECRET=<secret>
    python examples/voice_agent.py start

then join a room from a frontend (Agents Playground, a starter app) with an
identity such as ``user-4e3efa3d-d8fe-431e-9a1b-2c3d4e5f6a7b``, refresh the page
and keep talking. See ``docs/agents.md``.

With ``VOICE_AGENT_MODELS=none`` the jobs use no models (and need no cloud
credentials): the lifecycle runs as above with a silent agent, against any
server, the test's loopback server included.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    JobContext,
    RunContext,
    cli,
    function_tool,
    inference,
)
from livekit.agents.tts import TTS

from livekit_lifecycle import LifecycleConfig, Session
from livekit_lifecycle.agents import JobLifecycleManager, for_job

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def extract_user_id(identity: str) -> str | None:
    """The user id (a UUID) inside an identity like ``user-<uuid>`` or ``user-<uuid>-<tab>``."""
    match = _UUID.search(identity)
    return match.group(0).lower() if match else None


def session_key(participant: rtc.RemoteParticipant) -> str:
    """One lifecycle session per user, whatever identity each page load gets."""
    return extract_user_id(participant.identity) or participant.identity


CONFIG = LifecycleConfig(grace_period=15.0, cleanup_timeout=5.0, session_key=session_key)
"""15 s: under the room's default ``departure_timeout`` (20 s); 5 s per cleanup fits the
worker's 10 s shutdown budget. See docs/agents.md."""


@dataclass
class Pipeline:
    """The models of one job: the AgentSession, and the TTS to close at shutdown."""

    session: AgentSession[Any]
    tts: TTS[Any] | None = None


PipelineFactory = Callable[[], Pipeline]


def inference_pipeline() -> Pipeline:
    """LiveKit Inference models (LiveKit Cloud credentials are all they need)."""
    voice = inference.TTS("cartesia/sonic-3")
    session: AgentSession[Any] = AgentSession(
        stt=inference.STT("deepgram/nova-3"),
        llm=inference.LLM("openai/gpt-4.1-mini"),
        tts=voice,
        vad=inference.VAD(),
    )
    return Pipeline(session, voice)


def models_free_pipeline() -> Pipeline:
    """No models at all: joins, refreshes, ids and notes work; the agent stays silent.

    For running the worker without cloud credentials (tests, the demo's worker mode).
    """
    return Pipeline(AgentSession())


PIPELINES: dict[str, PipelineFactory] = {
    "inference": inference_pipeline,
    "none": models_free_pipeline,
}
MODELS_ENV = "VOICE_AGENT_MODELS"
"""``inference`` (the default) or ``none``: which pipeline the worker's jobs use."""


def pipeline_from_env() -> Pipeline:
    """The pipeline ``$VOICE_AGENT_MODELS`` names (``inference`` when unset)."""
    name = os.environ.get(MODELS_ENV, "inference")
    try:
        factory = PIPELINES[name]
    except KeyError:
        raise ValueError(
            f"{MODELS_ENV} must be one of {', '.join(PIPELINES)}, got {name!r}"
        ) from None
    return factory()


class Assistant(Agent):
    """A small assistant that keeps notes about its user in the lifecycle session."""

    def __init__(self, lifecycle: JobLifecycleManager) -> None:
        super().__init__(
            instructions=(
                "You are a friendly voice assistant. Keep answers short. When the user tells"
                " you something worth remembering about them, call remember_note."
            )
        )
        self.lifecycle = lifecycle

    async def on_enter(self) -> None:
        if self.session.llm is not None:
            self.session.generate_reply(instructions="Greet the user and offer your help.")

    @function_tool
    async def remember_note(self, context: RunContext[Any], note: str) -> str:
        """Remember a note about the user for the rest of the conversation.

        Args:
            note: What to remember, in a few words.
        """
        user = self.lifecycle.linked_session
        if user is None:
            return "Nobody is connected right now."
        notes: list[str] = user.data.setdefault("notes", [])
        notes.append(note)
        return f"Noted. Notes so far: {'; '.join(notes)}"


async def entrypoint(ctx: JobContext, *, pipeline: PipelineFactory = pipeline_from_env) -> None:
    """The job: a refresh-safe AgentSession for the user who joins the room."""
    models = pipeline()
    manager = await for_job(ctx, session=models.session, config=CONFIG, resources=[models.tts])

    @manager.on("created")
    def identify(user: Session) -> None:
        # The seed's extract_uuid_from_identity, once per new user session;
        # the id then survives refreshes inside the window.
        manager.set_user_id(user.key, extract_user_id(user.identity))

    @manager.on("reconnected")
    def welcome_back(user: Session) -> None:
        if user.key == manager.linked_key and models.session.llm is not None:
            models.session.generate_reply(
                instructions="The user reloaded the page and is back. Welcome them back in a"
                " few words and continue where you left off."
            )

    await manager.start_session(Assistant(manager))


server = AgentServer()
server.rtc_session(entrypoint)


if __name__ == "__main__":
    cli.run_app(server)
