"""OpenTelemetry spans (livekit_lifecycle.tracing), recorded by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from livekit_lifecycle import LifecycleConfig, LifecycleManager, Session, State
from livekit_lifecycle.testing import RoomDriver
from livekit_lifecycle.tracing import CLEANUP_SPAN, SHUTDOWN_SPAN, enable_tracing
from tests.conftest import MakeManager

WAIT = 5.0


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def attrs(span: ReadableSpan) -> dict[str, object]:
    return {k.removeprefix("livekit_lifecycle."): v for k, v in (span.attributes or {}).items()}


async def test_a_span_per_cleanup_with_session_attributes_and_outcome(
    make_manager: MakeManager,
    driver: RoomDriver,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    manager = make_manager(grace_period=30, cleanup_timeout=0.05)
    enable_tracing(manager, provider)
    enable_tracing(manager, provider)  # idempotent: one span per cleanup

    async def cleanup(session: Session) -> None:
        if session.key == "bob":
            raise RuntimeError("boom")
        if session.key == "carol":
            await asyncio.sleep(10)

    manager.add_cleanup(cleanup)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("room-event") as parent:
        alice = driver.connect("alice", active=True)
        driver.disconnect("alice")
    for key in ("bob", "carol"):
        driver.connect(key, active=True)
        driver.disconnect(key)
    for key in ("alice", "bob", "carol"):
        await manager.wait_for(key, State.GRACE, WAIT)

    spans = {attrs(s)["key"]: s for s in exporter.get_finished_spans() if s.name == CLEANUP_SPAN}
    assert set(spans) == {"alice", "bob", "carol"}
    assert attrs(spans["alice"]) == {
        "room": "test-room",
        "key": "alice",
        "identity": "alice",
        "sid": alice.sid,
        "trigger": "disconnect",
        "reason": "CLIENT_INITIATED",
        "outcome": "ok",
    }
    # Parented to the context the disconnect was handled in.
    assert spans["alice"].parent is not None
    assert spans["alice"].parent.span_id == parent.get_span_context().span_id
    assert spans["bob"].parent is None
    assert attrs(spans["bob"])["outcome"] == "error"
    assert spans["bob"].status.status_code is StatusCode.ERROR
    assert attrs(spans["carol"])["outcome"] == "timeout"
    assert spans["alice"].status.status_code is StatusCode.UNSET


async def test_shutdown_span_parents_its_cleanups(
    driver: RoomDriver, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    manager = LifecycleManager(LifecycleConfig())
    enable_tracing(manager, provider)
    manager.add_cleanup(lambda session: None)
    manager.attach(driver.room)
    driver.connect("alice", active=True)
    driver.connect("bob")
    with provider.get_tracer("test").start_as_current_span("agent-exit") as parent:
        await manager.aclose()
    spans = exporter.get_finished_spans()
    (shutdown,) = [s for s in spans if s.name == SHUTDOWN_SPAN]
    assert attrs(shutdown) == {"room": "test-room", "sessions": 2, "outcome": "ok"}
    assert shutdown.parent is not None
    assert shutdown.parent.span_id == parent.get_span_context().span_id
    cleanups = [s for s in spans if s.name == CLEANUP_SPAN]
    assert sorted(str(attrs(s)["key"]) for s in cleanups) == ["alice", "bob"]
    for span in cleanups:
        assert attrs(span)["trigger"] == "shutdown" and attrs(span)["reason"] == "shutdown"
        assert span.parent is not None and span.parent.span_id == shutdown.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # the shutdown detached its context


async def test_no_provider_means_no_op_spans(make_manager: MakeManager, driver: RoomDriver) -> None:
    # opentelemetry-api alone: the global provider is the API's no-op proxy.
    manager = make_manager(grace_period=0)
    enable_tracing(manager)
    manager.add_cleanup(lambda session: None)
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    await manager.idle()
    assert manager.state_of("alice") is None
    assert manager.stats["internal_errors"] == 0


async def test_a_failing_observer_is_logged_and_the_cleanup_goes_on(
    make_manager: MakeManager, driver: RoomDriver, caplog: pytest.LogCaptureFixture
) -> None:
    from livekit_lifecycle._observer import Observer

    class Broken(Observer):
        __slots__ = ()

        def cleanup_ended(self, session: Session) -> None:
            raise RuntimeError("exporter down")

    manager = make_manager(grace_period=30)
    manager._add_observer(Broken())
    driver.connect("alice", active=True)
    driver.disconnect("alice")
    session = await manager.wait_for("alice", State.GRACE, WAIT)
    assert session.cleanups == 1 and manager.stats["internal_errors"] == 0
    assert "observer.failed" in caplog.text
