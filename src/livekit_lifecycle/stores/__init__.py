"""Session stores: where a manager keeps its sessions so they can outlive its process.

:class:`MemoryStore` (the default) keeps them in the manager, as always: no
I/O, nothing survives the process. :class:`RedisStore` (extra
``livekit-lifecycle[redis]``) keeps them in Redis, shared by every agent
process, so a restarted or replacement process picks up the sessions of its
room, and two processes on one room clean each connection once in total.
See ``docs/stores.md``.

:class:`RedisStore`'s layout (details in its module, ``stores._redis``): one hash
per room, ``ns:{room}``, with the room as the Redis Cluster hash tag of every
key of the room (records, history, claims, token counter); a lease per process
in ``ns:leases`` (lease id -> expiry), refreshed every third of ``lease_ttl``;
the rooms index ``ns:rooms`` (room -> last change) and ``ns:lease-rooms:L``
(rooms of lease L). A room whose owner's lease lives never expires; a dead
owner's rooms stay for their retention (grace + margin), for a replacement or a
watchdog: :meth:`RedisStore.dead_rooms`, :meth:`RedisStore.claim_recovery`,
:meth:`RedisStore.read_room`, :meth:`RedisStore.rooms`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._data import SessionData
from ._fleet import fleet_snapshot
from ._json import check_json
from ._memory import MemoryStore
from ._protocol import Claim, RoomInfo, SessionStore, StoreWrite, process_owner
from ._record import SessionRecord, SkippedRecord, UnreadableRecord, parse_record, record_ttl

if TYPE_CHECKING:
    from ._redis import RedisStore

__all__ = [
    "Claim",
    "MemoryStore",
    "RedisStore",
    "RoomInfo",
    "SessionData",
    "SessionRecord",
    "SessionStore",
    "SkippedRecord",
    "StoreWrite",
    "UnreadableRecord",
    "check_json",
    "fleet_snapshot",
    "open_store",
    "parse_record",
    "process_owner",
    "record_ttl",
]


def __getattr__(name: str) -> Any:
    # RedisStore needs the optional `redis` package: import it only when asked for.
    if name == "RedisStore":
        from ._redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, *, namespace: str | None = None) -> SessionStore:
    """A store from a URL: ``redis://``, ``rediss://`` or ``unix://`` for :class:`RedisStore`,
    ``redis+cluster://host:port`` (or ``rediss+cluster://``) for a :class:`RedisStore` on a
    Redis Cluster (any node), ``memory://`` for an empty :class:`MemoryStore`.

    Raises:
        ValueError: for another scheme, or a Redis URL whose port or database
            (the path, or ``?db=``) is not a number in range.
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from ._redis import DEFAULT_NAMESPACE, RedisStore
        from ._url import check_redis_url

        check_redis_url(url)

        return RedisStore.from_url(url, namespace=namespace or DEFAULT_NAMESPACE)
    raise ValueError(
        f"unknown store URL scheme {scheme!r}"
        " (redis://, rediss://, unix://, redis+cluster://, memory://)"
    )
