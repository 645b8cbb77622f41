"""Store fixtures: a RedisStore on the test's own redis-server (or Redis Cluster), in a
namespace of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from livekit_lifecycle.stores import RedisStore, SessionStore, open_store
from livekit_loopback.redis_server import RedisServer


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, namespace=f"t{uuid.uuid4().hex[:8]}")
    yield store
    await store.aclose()


def _server_url(request: pytest.FixtureRequest, kind: str) -> str:
    server: Any = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
    return str(server.url)


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
def redis_url(request: pytest.FixtureRequest) -> str:
    """A URL of the test's own Redis: a single redis-server, then a real 3-master Redis Cluster."""
    return _server_url(request, request.param)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
def any_store_url(request: pytest.FixtureRequest) -> str:
    return "memory://" if request.param == "memory" else _server_url(request, request.param)


@pytest.fixture
async def any_store(any_store_url: str) -> AsyncIterator[SessionStore]:
    """Each store the package ships (RedisStore on one node and on a Cluster), for tests of
    the contract every store keeps."""
    store = open_store(any_store_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    yield store
    await store.aclose()


@pytest.fixture(params=["redis", "cluster"])
def fleet_url(request: pytest.FixtureRequest) -> str:
    """The ``fleet`` fixture's Redis (test_manager_store): the test's redis-server, then a
    real 3-master Redis Cluster. Tests that kill the server run on one node:
    ``parametrize("fleet_url", ["redis"], indirect=True)``."""
    return _server_url(request, request.param)
