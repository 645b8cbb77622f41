"""Store fixtures: a RedisStore on the test's own redis-server, in a namespace of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from livekit_lifecycle.stores import MemoryStore, RedisStore, SessionStore
from livekit_loopback.redis_server import RedisServer


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, namespace=f"t{uuid.uuid4().hex[:8]}")
    yield store
    await store.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def any_store(request: pytest.FixtureRequest) -> SessionStore:
    """Each store the package ships, for tests of the contract every store keeps."""
    if request.param == "memory":
        return MemoryStore()
    store: Any = request.getfixturevalue("redis_store")
    return store  # type: ignore[no-any-return]
