""":class:`RedisStore`: sessions in Redis, shared by every agent process of a fleet.

Key layout (``ns`` the namespace; ``R`` the room, ``L`` a lease id, ``K`` a session
key, ``S`` a participant sid, all percent-encoded so any name is safe). Every key
of a room carries the room as its Redis Cluster hash tag (``{R}``), so everything
one room needs is in one slot; the three fleet-wide keys are small indexes::

    ns:{R}                   hash: the room. Fields ``s:K`` (record JSON, history
                             left out), ``h:K`` (the session's history, one JSON
                             entry a line, oldest first, capped), ``owner`` (lease
                             id of the process that wrote last), ``changed`` (ms).
                             Its TTL is the room's retention (grace + margin),
                             refreshed by its owner's lease loop: never expires
                             while the owner lives.
    ns:{R}:token             the room's fencing-token counter (claims)
    ns:{R}:claim:K:S         a connection's cleanup claim: "token lease owner",
                             prefixed "d " once a write says that connection
                             was cleaned (see _CLAIM_SCRIPT)
    ns:{R}:recovery:L        set-once: who recovers this room from dead lease L
    ns:rooms                 sorted set: room -> last change (ms): the rooms index
    ns:leases                sorted set: lease id -> expiry (ms): the leases
    ns:lease-rooms:L         set: the rooms lease L has written (for the watchdog)

A lease is alive while its score in ``ns:leases`` is in the future. A process
refreshes it every third of ``lease_ttl`` with one script call; once expired it
is never revived (the process takes a new lease id), so "dead" is final and
a claim or room held by a dead lease can be taken over safely. A dead lease
leaves ``ns:leases`` at the first ``dead_rooms`` (a watchdog's poll) that finds
none of its rooms left to recover, else a retention plus ``claim_ttl`` after its
expiry (the next lease refresh of any process).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import quote, unquote

import orjson

from livekit_lifecycle._numbers import require_seconds
from livekit_lifecycle.log import get_logger

from ._json import check_json
from ._protocol import Claim, RoomInfo, StoreWrite, log_skipped, process_owner
from ._record import (
    RECORD_VERSION,
    SessionRecord,
    SkippedRecord,
    UnreadableRecord,
    collector_paused,
    parse_record,
)

_Skipped = Callable[[SkippedRecord], None] | None
_T = TypeVar("_T")
_Convert = Callable[[bytes, str, str], _T]
"""What a read makes of one record's text (with its history), its room and key."""

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = ["RedisStore"]

DEFAULT_NAMESPACE = "livekit-lifecycle"
DEFAULT_LEASE_TTL = 4.0
"""Seconds: a dead job is seen 2.7-4 s after it died, and recovered under 5 s with a warm
worker (issue 22, docs/recovery.md); a process stalled longer than two thirds of it loses its
lease. 5 s until issue 22 measured recovery: 4.5-5.2 s median, up to 5.6 s."""
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]+")
_PLAIN = re.compile(r"[A-Za-z0-9._~-]+")
"""What ``quote(name, safe="")`` leaves as it is."""
_PER_CALL = 500
"""Entries in one script call at most: no call holds Redis for long (a script runs alone)."""
_CLAIM_CALLS = 8
"""Claim script calls in flight at once, at most (each on a connection of its own)."""
_WARM_CONNECTIONS = 6
"""Connections opened when a manager attaches: its claim batches in flight (4), its
writer and the lease loop."""
_CLOSE_WAIT = 2.0
"""Seconds aclose() waits for the store's own tasks to end once cancelled."""
_MARKED = 64
"""Claims one entry marks done at most (the newest): more only when one user's
connections came and went that fast between two writes of its session."""

# One room's upserts and deletes in one call, in order. KEYS[1] the room hash, then
# the claims of the connections the upserts say were cleaned, in order.
# ARGV: lease, now (ms), room TTL (ms), entry count, then per entry
#   key, 'd', m                                           delete
#   key, 'r'|'a', record, m, limit, n, entry1..entryn     upsert; replace or append history
# m: the next m claim keys are marked done ("d " before their value): the writer saw
# the cleanup of those connections of that key end (StoreWrite.cleaned).
# Answers the room's session count (the room is deleted when none is left).
_WRITE_SCRIPT = """
local room = KEYS[1]
local i = 5
local delta = 0
local c = 1
local function mark(m)
  for _ = 1, tonumber(m) do
    c = c + 1
    local held = redis.call('GET', KEYS[c])
    if held and string.sub(held, 1, 2) ~= 'd ' then
      local ttl = redis.call('PTTL', KEYS[c])
      if ttl > 0 then redis.call('SET', KEYS[c], 'd ' .. held, 'PX', ttl) end
    end
  end
end
for _ = 1, tonumber(ARGV[4]) do
  local key = ARGV[i]
  local op = ARGV[i + 1]
  if op == 'd' then
    delta = delta - redis.call('HDEL', room, 's:' .. key)
    redis.call('HDEL', room, 'h:' .. key)
    mark(ARGV[i + 2])
    i = i + 3
  else
    delta = delta + redis.call('HSET', room, 's:' .. key, ARGV[i + 2])
    mark(ARGV[i + 3])
    local limit = tonumber(ARGV[i + 4])
    local n = tonumber(ARGV[i + 5])
    local parts = {}
    if op == 'a' then
      local old = redis.call('HGET', room, 'h:' .. key)
      if old and old ~= '' then parts[1] = old end
    end
    for j = 1, n do parts[#parts + 1] = ARGV[i + 5 + j] end
    local hist = table.concat(parts, '\\n')
    if limit > 0 and hist ~= '' then
      local _, breaks = string.gsub(hist, '\\n', '')
      local extra = breaks + 1 - limit
      local at = 1
      while extra > 0 do
        at = string.find(hist, '\\n', at, true) + 1
        extra = extra - 1
      end
      if at > 1 then hist = string.sub(hist, at) end
    end
    if hist == '' then
      redis.call('HDEL', room, 'h:' .. key)
    else
      redis.call('HSET', room, 'h:' .. key, hist)
    end
    i = i + 6 + n
  end
end
local sessions = redis.call('HINCRBY', room, 'n', delta)
if sessions <= 0 then
  redis.call('DEL', room)
  return 0
end
redis.call('HSET', room, 'owner', ARGV[1], 'changed', ARGV[2])
redis.call('PEXPIRE', room, ARGV[3])
return sessions
"""

# The lease: alive while its score is in the future; refreshed only while alive.
# KEYS[1] ns:leases. ARGV: lease, now (ms), new expiry (ms), 'new'|'refresh',
# forget-before (ms): dead leases older than that are dropped from the index.
_LEASE_SCRIPT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[4] == 'refresh' and (not score or tonumber(score) <= tonumber(ARGV[2])) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
return 1
"""

# Claims of one room, many per call. KEYS[1] the room's token counter, KEYS[2]
# the room hash, KEYS[i] (i > 2) a claim. ARGV: claim TTL (ms), this lease,
# then the claims in one argument, each "owner\x1fkey\x1fsid\x1ftakeover", joined
# by "\x1e": owner ('' = the previous claim's), session key (quoted), sid,
# takeover-token (0: none). An owner or sid holding a separator comes as "\x1d" and
# its bytes in hex (_packed_field).
# A claim free -> taken with a fresh token. Held -> answered as is, unless the
# caller names the token it found held by a dead lease (checked by the caller:
# leases live in another slot) and the cleanup was not done: then taken over.
# "Done": the claim is marked so ("d " before its value: a write that says the
# connection was cleaned, _WRITE_SCRIPT), or the session's record says so:
# gone, another connection, or past the cleanup (cleaned, grace, reconnected,
# removed). The mark is what a manager that lost the claim and waits for it reads:
# its own record, written behind the winner's, may show the connection back in
# 'disconnecting'; nothing unmarks a claim (a takeover only replaces an unmarked one).
# Answers per claim: won (0/1), holder owner ('' = the claimant), token, holder
# lease ('' = this lease), retry (0/1), done (0/1: a held claim whose cleanup is
# marked or recorded done). The '' forms keep a batch's answer small: a reply of 500
# claims is read in one go, not in several turns of the caller's event loop.
_CLAIM_SCRIPT = """
local answers = {}
local owner = ''
local packed = ARGV[3]
local at = 1
local function raw(field)
  if string.byte(field, 1) ~= 29 then return field end
  return (string.gsub(string.sub(field, 2), '..', function(h)
    return string.char(tonumber(h, 16))
  end))
end
for c = 3, #KEYS do
  local stop = string.find(packed, '\\30', at, true) or (#packed + 1)
  local f1 = string.find(packed, '\\31', at, true)
  local f2 = string.find(packed, '\\31', f1 + 1, true)
  local f3 = string.find(packed, '\\31', f2 + 1, true)
  if f1 > at then owner = raw(string.sub(packed, at, f1 - 1)) end
  local key, sid = string.sub(packed, f1 + 1, f2 - 1), raw(string.sub(packed, f2 + 1, f3 - 1))
  local over = tonumber(string.sub(packed, f3 + 1, stop - 1))
  at = stop + 1
  local held = redis.call('GET', KEYS[c])
  local take = not held
  local retry, done = 0, 0
  local token, lease, holder = 0, '', ''
  if held then
    local marked = string.sub(held, 1, 2) == 'd '
    if marked then held = string.sub(held, 3) end
    local first = string.find(held, ' ', 1, true)
    local second = string.find(held, ' ', first + 1, true)
    token = tonumber(string.sub(held, 1, first - 1))
    lease = string.sub(held, first + 1, second - 1)
    holder = string.sub(held, second + 1)
    done = 1
    local text = not marked and redis.call('HGET', KEYS[2], 's:' .. key)
    if text then
      local ok, record = pcall(cjson.decode, text)
      if ok and type(record) == 'table' and record['sid'] == sid then
        local state = record['state']
        if state == 'active' or state == 'connecting' or state == 'disconnecting' then
          done = 0
        end
      end
    end
    if over > 0 and over == token and done == 0 then take = true; retry = 1 end
  end
  if take then
    token = redis.call('INCR', KEYS[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    redis.call('SET', KEYS[c], token .. ' ' .. ARGV[2] .. ' ' .. owner, 'PX', ARGV[1])
    answers[#answers + 1] = 1
    answers[#answers + 1] = ''
    answers[#answers + 1] = token
    answers[#answers + 1] = ''
    answers[#answers + 1] = retry
    answers[#answers + 1] = 0
  else
    if holder == owner then holder = '' end
    if lease == ARGV[2] then lease = '' end
    answers[#answers + 1] = 0
    answers[#answers + 1] = holder
    answers[#answers + 1] = token
    answers[#answers + 1] = lease
    answers[#answers + 1] = 0
    answers[#answers + 1] = done
  end
end
return answers
"""


class _ClaimSink:
    """The answers of one ``claim`` or ``claim_many`` call, filled as script calls return:
    one future per call, not per claim."""

    __slots__ = ("claims", "future", "left")

    def __init__(self, size: int, future: asyncio.Future[list[Claim]]) -> None:
        self.claims: list[Claim] = [_NO_CLAIM] * size
        self.left = size
        self.future = future

    def put(self, index: int, claim: Claim) -> None:
        self.claims[index] = claim
        self.left -= 1
        if not self.left and not self.future.done():
            self.future.set_result(self.claims)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


_NO_CLAIM = Claim(False, "", 0)


class _PendingClaim(NamedTuple):
    key: str
    sid: str
    owner: str
    sink: _ClaimSink
    position: int


class RedisStore:
    """Sessions in Redis: one hash per room, a lease per process, a rooms index.

    See the module docstring (``livekit_lifecycle.stores._redis``) and
    ``docs/stores.md`` for the key layout. Accepts a ``redis.asyncio.Redis`` or a
    ``redis.asyncio.RedisCluster``: every key of a room shares the room's hash tag.

    Needs the ``redis`` extra: ``pip install 'livekit-lifecycle[redis]'``.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl_margin: float = 60.0,
        claim_ttl: float = 600.0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"namespace must be letters, digits, '.', '_' or '-' (no ':'), got {namespace!r}"
            )
        self._client: Any = client
        self._namespace = namespace
        self._ttl_margin = require_seconds("ttl_margin", ttl_margin, allow_zero=False)
        claim_ttl = require_seconds("claim_ttl", claim_ttl, allow_zero=False)
        self._claim_ms = max(1000, round(claim_ttl * 1000))
        self._lease_ttl = require_seconds("lease_ttl", lease_ttl, allow_zero=False)
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._write = client.register_script(_WRITE_SCRIPT)
        self._lease_script = client.register_script(_LEASE_SCRIPT)
        self._claims: dict[str, list[_PendingClaim]] = {}
        """Claims waiting for the next round trip, per room: one script call per room."""
        self._claiming: asyncio.Task[None] | None = None
        self._lease = process_owner()
        self._lease_task: asyncio.Task[None] | None = None
        self._lease_held = False
        self._acquiring: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None
        self._closing = False
        self._rooms: dict[str, int] = {}
        """Rooms this process holds sessions of -> retention (ms): the lease loop refreshes them."""
        self._indexed: set[str] = set()
        """Rooms already in this lease's ``lease-rooms`` set."""
        self._log = get_logger()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl_margin: float = 60.0,
        claim_ttl: float = 600.0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        timeout: float = 2.0,
        cluster: bool = False,
        **client_options: Any,
    ) -> RedisStore:
        """A store on the Redis at ``url`` (``redis://host:port/db``, ``rediss://``, ``unix://``).

        ``cluster=True`` (or a ``redis+cluster://host:port`` URL) connects to a Redis
        Cluster through any of its nodes (``redis.asyncio.RedisCluster``).
        ``timeout`` bounds connecting and each command; ``client_options`` go
        to the client's ``from_url``. No connection is made here.
        """
        timeout = require_seconds("timeout", timeout, allow_zero=False)
        client_options.setdefault("socket_timeout", timeout)
        client_options.setdefault("socket_connect_timeout", timeout)
        scheme, sep, rest = url.partition("://")
        if scheme.lower() in ("redis+cluster", "rediss+cluster"):
            cluster = True
            url = f"{scheme.lower().partition('+')[0]}{sep}{rest}"
        client: Redis | RedisCluster
        if cluster:
            from redis.asyncio import RedisCluster

            client = RedisCluster.from_url(url, **client_options)
        else:
            from redis.asyncio import Redis

            client = Redis.from_url(url, **client_options)
        return cls(
            client,
            namespace=namespace,
            ttl_margin=ttl_margin,
            claim_ttl=claim_ttl,
            lease_ttl=lease_ttl,
        )

    @property
    def durable(self) -> bool:
        return True

    @property
    def ttl_margin(self) -> float:
        return self._ttl_margin

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def lease(self) -> str:
        """This store's lease id (``host:pid:nonce``): rooms and claims it writes name it."""
        return self._lease

    @property
    def lease_ttl(self) -> float:
        return self._lease_ttl

    @property
    def client(self) -> Any:
        """The ``redis.asyncio`` client (for the application's own checks)."""
        return self._client

    # ------------------------------------------------------------------ key names

    def _room_key(self, room: str) -> str:
        return f"{self._namespace}:{{{_quote(room)}}}"

    def _claim_key(self, room: str, key: str, sid: str) -> str:
        return f"{self._room_key(room)}:claim:{_quote(key)}:{_quote(sid)}"

    @property
    def _index(self) -> str:
        return f"{self._namespace}:rooms"

    @property
    def _leases(self) -> str:
        return f"{self._namespace}:leases"

    def _lease_rooms(self, lease: str) -> str:
        return f"{self._namespace}:lease-rooms:{_quote(lease)}"

    # ------------------------------------------------------------------ reading

    async def load(self, room: str, *, skipped: _Skipped = None) -> list[SessionRecord]:
        """Every record of ``room``: one ``HGETALL``, whatever else the database holds."""
        fields = await self._client.hgetall(self._room_key(room))
        return self._parse(room, fields, skipped)

    async def load_many(
        self, rooms: Sequence[str], *, skipped: _Skipped = None
    ) -> dict[str, list[SessionRecord]]:
        """The records of several rooms, in pipelined ``HGETALL`` calls (the fleet view)."""

        def parse(room: str, fields: dict[Any, Any]) -> list[SessionRecord]:
            return self._parse_fields(room, fields, skipped, _as_record)

        return await self._read_rooms(rooms, parse)

    async def _read_rooms(
        self, rooms: Sequence[str], parse: Callable[[str, dict[Any, Any]], _T]
    ) -> dict[str, _T]:
        """``parse(room, fields)`` of each room's ``HGETALL`` (a record it refuses is
        skipped with its log line: see :meth:`_parse_fields`)."""
        result: dict[str, _T] = {}
        # One pause of the collector for the whole read, not one per room: the
        # records of every room read so far survive, and full collections of a
        # growing heap were half of a 100,000-session fleet view.
        with collector_paused():
            for start in range(0, len(rooms), _PER_CALL):
                chunk = rooms[start : start + _PER_CALL]
                async with self._client.pipeline(transaction=False) as pipe:
                    for room in chunk:
                        pipe.hgetall(self._room_key(room))
                    answers = await pipe.execute()
                for room, fields in zip(chunk, answers, strict=True):
                    result[room] = parse(room, fields)
                    # A turn of the loop between rooms: decoding 500 rooms at once held
                    # the loop for seconds, long enough for this process's lease to expire.
                    await asyncio.sleep(0)
        return result

    def _parse(self, room: str, fields: dict[Any, Any], skipped: _Skipped) -> list[SessionRecord]:
        with collector_paused():
            return self._parse_fields(room, fields, skipped, _as_record)

    def _parse_fields(
        self, room: str, fields: dict[Any, Any], skipped: _Skipped, convert: _Convert[_T]
    ) -> list[_T]:
        records = []
        for name, text in fields.items():
            field = name if isinstance(name, bytes) else name.encode()
            if not field.startswith(b"s:"):
                continue
            quoted = field[2:].decode(errors="replace")
            key = unquote(quoted) if "%" in quoted else quoted
            history = fields.get(b"h:" + field[2:] if name is field else f"h:{quoted}")
            try:
                records.append(convert(_with_history(text, history), room, key))
            except UnreadableRecord as exc:
                skip = SkippedRecord(f"{self._room_key(room)} s:{quoted}", room, key, exc.reason)
                if skipped is None:
                    log_skipped(self._log, skip)
                else:
                    skipped(skip)
        return records

    async def rooms(self, since: float = 0.0) -> list[tuple[str, float]]:
        """Rooms with sessions, as ``(room, last change)`` (wall-clock s), changed at or after
        ``since``: one ``ZRANGEBYSCORE`` on the rooms index."""
        entries = await self._client.zrangebyscore(
            self._index, round(since * 1000), "+inf", withscores=True
        )
        return [(unquote(_text(name)), score / 1000) for name, score in entries]

    async def read_room(self, room: str) -> RoomInfo:
        """One room on its own: its owner (lease), whether that lease is alive, its sessions."""
        fields = await self._client.hgetall(self._room_key(room))
        owner = _text(fields.get(b"owner", fields.get("owner", b"")))
        changed = float(_text(fields.get(b"changed", fields.get("changed", b"0"))) or 0) / 1000
        records = self._parse(room, fields, None)
        alive = bool(owner) and await self._lease_alive(owner)
        return RoomInfo(room, owner, alive, changed, tuple(records))

    async def _lease_alive(self, lease: str) -> bool:
        score = await self._client.zscore(self._leases, lease)
        return score is not None and score > time.time() * 1000

    async def dead_rooms(self) -> list[RoomInfo]:
        """Rooms whose owner's lease expired and that still hold sessions (unfinished
        sessions or owed cleanups): what a watchdog dispatches again.

        Costs one ``ZRANGEBYSCORE`` when no lease is dead; then, per dead lease, its
        rooms (one ``SMEMBERS``) and one pipelined ``HGETALL`` per such room. A room
        another process took over (or that emptied) is dropped from the dead lease's
        rooms then (one ``SREM``), so it is read once after its recovery, not at every
        poll until the dead lease's index expires. A dead lease left with no room is
        dropped from ``ns:leases`` (one ``ZREM`` for all of them): nothing of it is left
        to recover, and the next polls do not read it again. (The lease script forgets
        dead leases too, a retention plus ``claim_ttl`` after their expiry: the backstop
        while no watchdog runs.) An expired lease is never refreshed again, and a lease
        missing from ``ns:leases`` counts as dead, so dropping one changes no answer.
        """
        now_ms = round(time.time() * 1000)
        dead = await self._client.zrangebyscore(self._leases, "-inf", now_ms)
        found: list[RoomInfo] = []
        finished: list[str] = []
        """Dead leases with no room left to recover: dropped from the leases below."""
        for lease in map(_text, dead):
            index = self._lease_rooms(lease)
            quoted = sorted(_text(r) for r in await self._client.smembers(index))
            if not quoted:
                finished.append(lease)
                continue
            rooms = [unquote(r) for r in quoted]
            async with self._client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hgetall(self._room_key(room))
                answers = await pipe.execute()
            settled: list[str] = []
            for name, room, fields in zip(quoted, rooms, answers, strict=True):
                texts = {_text(k): v for k, v in fields.items()}
                owner = _text(texts.get("owner", b""))
                records = self._parse(room, fields, None) if owner == lease else []
                if not records:
                    settled.append(name)  # recovered, or nothing left to recover
                    continue
                changed = float(_text(texts.get("changed", b"0")) or 0) / 1000
                found.append(RoomInfo(room, lease, False, changed, tuple(records)))
            if settled:
                await self._client.srem(index, *settled)
                if len(settled) == len(quoted):
                    finished.append(lease)
        if finished:
            await self._client.zrem(self._leases, *finished)
        return found

    async def next_lease_expiry(self) -> float | None:
        """When the next live lease expires (wall-clock s), ``None`` with none: one
        ``ZRANGEBYSCORE ... LIMIT 0 1``. A watchdog wakes then, so a dead process's rooms
        are dispatched as its lease expires, not up to a poll interval later."""
        now_ms = round(time.time() * 1000)
        entries = await self._client.zrangebyscore(
            self._leases, f"({now_ms}", "+inf", start=0, num=1, withscores=True
        )
        return float(entries[0][1]) / 1000 if entries else None

    async def claim_recovery(self, room: str, dead_lease: str, claimant: str) -> bool:
        """Set-once: True for the first ``claimant`` to recover ``room`` from ``dead_lease``.

        Several watchdogs call it for the same dead room; one wins. The claim lives
        as long as the room's records could (``claim_ttl``).
        """
        name = f"{self._room_key(room)}:recovery:{_quote(dead_lease)}"
        won = await self._client.set(name, claimant, nx=True, px=self._claim_ms)
        if won:
            return True
        holder = await self._client.get(name)
        return holder is not None and _text(holder) == claimant

    async def scan(self, *, skipped: _Skipped = None) -> AsyncIterator[SessionRecord]:
        """Every record of every room (through the rooms index, never a keyspace SCAN)."""
        rooms = [room for room, _ in await self.rooms()]
        for records in (await self.load_many(rooms, skipped=skipped)).values():
            for record in records:
                yield record

    # ------------------------------------------------------------------ writing

    async def write(self, batch: Sequence[StoreWrite]) -> None:
        """See :meth:`SessionStore.write`: one script call per room (and 500 entries),
        with the rooms-index update sent alongside."""
        await self._ensure_lease()
        by_room: dict[str, list[StoreWrite]] = {}
        for entry in batch:
            by_room.setdefault(entry.room, []).append(entry)
        now_ms = round(time.time() * 1000)
        for room, entries in by_room.items():
            retention = self._rooms.get(room, 0)
            for entry in entries:
                if entry.record is not None:
                    retention = max(retention, round(entry.ttl * 1000), 1000)
            retention = retention or round(self._ttl_margin * 1000)
            for start in range(0, len(entries), _PER_CALL):
                args: list[str | int | bytes] = []
                keys = [self._room_key(room)]
                chunk = entries[start : start + _PER_CALL]
                for entry in chunk:
                    entry_args, cleaned = _entry_args(entry)
                    args += entry_args
                    keys += [self._claim_key(room, entry.key, sid) for sid in cleaned]
                args = [self._lease, now_ms, retention, len(chunk), *args]
                calls: list[Any] = [self._write(keys=keys, args=args)]
                if room not in self._indexed:
                    calls.append(self._index_for_lease(room))
                calls.append(self._client.zadd(self._index, {_quote(room): now_ms}))
                sessions, *_ = await asyncio.gather(*calls)
            if sessions:
                self._rooms[room] = retention
            else:
                self._rooms.pop(room, None)
                await self._client.zrem(self._index, _quote(room))

    async def _index_for_lease(self, room: str) -> None:
        name = self._lease_rooms(self._lease)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.sadd(name, _quote(room))
            pipe.pexpire(name, self._retention_ms())
            await pipe.execute()
        self._indexed.add(room)

    def _retention_ms(self) -> int:
        return max([*self._rooms.values(), round(self._ttl_margin * 1000)]) + round(
            self._lease_ttl * 1000
        )

    # ------------------------------------------------------------------ the lease

    async def _ensure_lease(self) -> None:
        if self._lease_task is None:
            self._lease_task = asyncio.get_running_loop().create_task(
                self._keep_lease(), name="livekit-lifecycle:store-lease"
            )
        if not self._lease_held:
            # One acquisition, however many calls wait on it (a burst of claims at
            # start would otherwise open a connection each).
            if self._acquiring is None or self._acquiring.done():
                self._acquiring = asyncio.get_running_loop().create_task(self._acquire())
            await asyncio.shield(self._acquiring)  # raises while Redis is down: so does the call

    async def _acquire(self) -> None:
        if not self._lease_held:
            await self._renew("new")
            self._lease_held = True
            # The first claim and write then find their scripts loaded: without this each
            # paid a refused EVALSHA and a SCRIPT LOAD, two round trips more, while the
            # first cleanups of a burst waited on them.
            with contextlib.suppress(Exception):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.script_load(_CLAIM_SCRIPT)
                    pipe.script_load(_WRITE_SCRIPT)
                    await pipe.execute()

    async def _renew(self, mode: str) -> bool:
        now_ms = round(time.time() * 1000)
        expiry = now_ms + round(self._lease_ttl * 1000)
        forget = now_ms - self._retention_ms() - round(self._claim_ms)
        answer = await self._lease_script(
            keys=[self._leases], args=[self._lease, now_ms, expiry, mode, forget]
        )
        return bool(answer)

    async def _keep_lease(self) -> None:
        """Refresh the lease every third of its TTL (one command), and the TTLs of the
        rooms held every third of their retention (one pipeline): the steady cost."""
        period = self._lease_ttl / 3
        last_rooms = time.monotonic()
        while not self._closing:
            await asyncio.sleep(period)
            try:
                if not self._lease_held:  # Redis was down when it was first needed
                    await self._renew("new")
                    self._lease_held = True
                elif not await self._renew("refresh"):
                    self._lost_lease()
                    await self._renew("new")
                    await self._reown_rooms()
                retention = min(self._rooms.values(), default=0) / 1000
                if self._rooms and time.monotonic() - last_rooms >= retention / 3 - period:
                    await self._refresh_rooms()
                    last_rooms = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    # redis-py can turn the cancellation of a call in flight into an
                    # error of its own: without this the loop would outlive aclose().
                    return
                # The writer reports outages; here only the cost of a retry next period.
                self._log.debug("store.lease_refresh_failed", category="store", error=str(exc))

    def _lost_lease(self) -> None:
        old, self._lease = self._lease, process_owner()
        self._indexed.clear()
        self._log.warning("store.lease_lost", category="store", lease=old, new_lease=self._lease)

    async def _reown_rooms(self) -> None:
        rooms = list(self._rooms)
        name = self._lease_rooms(self._lease)
        for start in range(0, len(rooms), _PER_CALL):
            async with self._client.pipeline(transaction=False) as pipe:
                for room in rooms[start : start + _PER_CALL]:
                    pipe.hset(self._room_key(room), "owner", self._lease)
                    pipe.sadd(name, _quote(room))
                pipe.pexpire(name, self._retention_ms())
                await pipe.execute()
        self._indexed.update(rooms)

    async def _refresh_rooms(self) -> None:
        rooms = list(self._rooms.items())
        for start in range(0, len(rooms), _PER_CALL):
            async with self._client.pipeline(transaction=False) as pipe:
                for room, retention in rooms[start : start + _PER_CALL]:
                    pipe.pexpire(self._room_key(room), retention)
                pipe.pexpire(self._lease_rooms(self._lease), self._retention_ms())
                await pipe.execute()

    # ------------------------------------------------------------------ claims

    async def claim(self, room: str, key: str, sid: str, owner: str) -> Claim:
        """See :meth:`SessionStore.claim`. Claims made meanwhile share one round trip per room.

        A claim held by a process whose lease expired before the cleanup was
        written as done is taken over, with a higher token and ``retry`` set.
        """
        if not self._lease_held or self._lease_task is None:  # a coroutine less per claim
            await self._ensure_lease()
        claim = (await self._queue(room, owner, [(key, sid)]))[0]
        if not claim.won and claim.lease and claim.lease != self._lease:
            return await self._take_over(room, key, sid, owner, claim)
        return claim

    async def claim_many(
        self, room: str, owner: str, connections: Sequence[tuple[str, str]]
    ) -> list[Claim]:
        """See :meth:`SessionStore.claim_many`: the claims join those waiting to be
        sent; one script call carries up to 500, and claims made while calls are in
        flight share the next one.

        No connections (a manager attaching to ``room``): the lease is taken, the
        scripts loaded and connections to the room's node opened in the background,
        so that the first cleanups of a burst do not wait for them."""
        if not connections:
            if self._warming is None and not self._closing:
                self._warming = asyncio.get_running_loop().create_task(
                    self._warm(room), name="livekit-lifecycle:store-warm"
                )
            return []
        if not self._lease_held or self._lease_task is None:
            await self._ensure_lease()
        if len(connections) <= _PER_CALL and not self._claims and self._claiming_idle():
            # Nothing queued: sent from here, a turn of the loop sooner
            # than through the sending task.
            claims = await self._claim_call(room, connections, owner=owner)
        else:
            claims = await self._queue(room, owner, connections)
        alive: dict[str, bool] = {}  # one look per lease, however many claims it holds
        for index, claim in enumerate(claims):
            if not claim.won and claim.lease and claim.lease != self._lease:
                if claim.lease not in alive:
                    alive[claim.lease] = await self._lease_alive(claim.lease)
                if not alive[claim.lease]:
                    key, sid = connections[index]
                    claims[index] = (
                        await self._claim_call(room, [(key, sid)], claim.token, owner=owner)
                    )[0]
        return claims

    async def _warm(self, room: str) -> None:
        with contextlib.suppress(Exception):  # down: the first real call says so
            await self._ensure_lease()
        # A connection opened in the middle of a burst costs its cleanups several round
        # trips (connect, HELLO, client info) on a busy loop: ~30 turns, measured.
        name = self._room_key(room)
        with contextlib.suppress(Exception):
            await asyncio.gather(*(self._client.exists(name) for _ in range(_WARM_CONNECTIONS)))

    def _claiming_idle(self) -> bool:
        return self._claiming is None or self._claiming.done()

    def _queue(
        self, room: str, owner: str, connections: Sequence[tuple[str, str]]
    ) -> asyncio.Future[list[Claim]]:
        """Queue claims for :meth:`_send_claims`: claims made while a call is in flight
        share the next one (and no burst opens a connection per caller)."""
        loop = asyncio.get_running_loop()
        sink = _ClaimSink(len(connections), loop.create_future())
        queued = self._claims.setdefault(room, [])
        for index, (key, sid) in enumerate(connections):
            queued.append(_PendingClaim(key, sid, owner, sink, index))
        if self._claiming_idle():
            self._claiming = loop.create_task(self._send_claims())
        return sink.future

    async def _take_over(self, room: str, key: str, sid: str, owner: str, claim: Claim) -> Claim:
        """``claim`` is held by another lease: if that lease expired, take the claim
        over (unless the cleanup was written as done), else answer it as is."""
        if await self._lease_alive(claim.lease):
            return claim
        return (await self._claim_call(room, [(key, sid)], claim.token, owner=owner))[0]

    async def _claim_call(
        self,
        room: str,
        batch: Sequence[_PendingClaim | tuple[str, str]],
        takeover: int = 0,
        *,
        owner: str = "",
    ) -> list[Claim]:
        """One script call; ``batch`` holds queued claims, or ``(key, sid)`` pairs of ``owner``."""
        room_key = self._room_key(room)
        keys = [f"{room_key}:token", room_key]
        this_lease = self._lease
        owners = []
        entries = []
        previous = ""
        for pending in batch:
            key, sid = pending[0], pending[1]
            by = pending.owner if isinstance(pending, _PendingClaim) else owner
            owners.append(by)
            quoted = _quote(key)
            keys.append(f"{room_key}:claim:{quoted}:{_quote(sid)}")
            field = "" if by == previous else _packed_field(by)
            entries.append(f"{field}\x1f{quoted}\x1f{_packed_field(sid)}\x1f{takeover}")
            previous = by
        # The claims in one argument, not four each: redis-py encodes every argument in
        # Python, which was most of a claim's cost on this side (docs/performance.md).
        packed = "\x1e".join(entries)
        answers = await self._claim(keys=keys, args=[self._claim_ms, this_lease, packed])
        claims = []
        for index, by in enumerate(owners):
            won, holder, token, lease, retry, done = answers[6 * index : 6 * index + 6]
            holder_name = _text(holder) or by
            claims.append(
                Claim(
                    bool(won) or holder_name == by,
                    holder_name,
                    int(token),
                    retry=bool(retry),
                    lease=_text(lease) or this_lease,
                    done=bool(done),
                )
            )
        return claims

    async def _send_claims(self) -> None:
        while self._claims:
            # Up to _CLAIM_CALLS script calls at once (a backlog of thousands is
            # one round trip, not one per 500: the claims wait less, and their
            # sessions live less long); the next ones wait for these.
            calls: list[tuple[str, list[_PendingClaim]]] = []
            while self._claims and len(calls) < _CLAIM_CALLS:
                room, pending = next(iter(self._claims.items()))
                calls.append((room, pending[:_PER_CALL]))
                del pending[:_PER_CALL]
                if not pending:
                    del self._claims[room]
            try:
                if len(calls) == 1:
                    answers: list[list[Claim] | Exception] = [
                        await _settled(self._claim_call(*calls[0]))
                    ]
                else:
                    answers = await asyncio.gather(
                        *(_settled(self._claim_call(room, batch)) for room, batch in calls)
                    )
            except BaseException:  # cancelled (aclose): so are the claims in flight
                for item in [
                    *(p for _, batch in calls for p in batch),
                    *(p for ps in self._claims.values() for p in ps),
                ]:
                    item.sink.future.cancel()
                raise
            for (_, batch), claims in zip(calls, answers, strict=True):
                if isinstance(claims, Exception):
                    for item in batch:
                        item.sink.fail(claims)
                    continue
                for item, claim in zip(batch, claims, strict=True):
                    item.sink.put(item.position, claim)

    # ------------------------------------------------------------------ the rest

    async def ping(self) -> None:
        await self._client.ping()

    async def aclose(self) -> None:
        """Stop the lease loop and release connections. Records stay; the lease is
        given up only when this process holds no room any more."""
        self._closing = True
        tasks = {
            t
            for t in (self._claiming, self._lease_task, self._acquiring, self._warming)
            if t is not None
        }
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded, and never swallowing this call's own cancellation (`await task`
            # under suppress(CancelledError) did both wrong: a lease loop whose
            # cancellation redis-py turned into its own error held aclose() for ever).
            await asyncio.wait(tasks, timeout=_CLOSE_WAIT)
        if self._lease_held and not self._rooms:
            with contextlib.suppress(Exception):
                await self._client.zrem(self._leases, self._lease)
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisStore(namespace={self._namespace!r})"


def _entry_args(entry: StoreWrite) -> tuple[list[str | int | bytes], list[str]]:
    """The write script's arguments of ``entry``, and the sids of the connections it
    says were cleaned (``entry.cleaned``: their claims are marked done)."""
    key = _quote(entry.key)
    record = entry.record
    if record is None:
        cleaned = _marked(entry)
        return [key, "d", len(cleaned)], cleaned
    # orjson refuses non-str keys and ints beyond 64 bits itself, but writes NaN as
    # null: what JSON cannot carry is refused here, before anything is sent.
    if record.data:
        check_json(record.data, "session data")
    if record.conversation is not None:
        check_json(record.conversation, "conversation")
    times = (record.connected_at, record.updated_at, record.disconnected_at, record.grace_deadline)
    for at in times:
        if at is not None and not math.isfinite(at):
            raise ValueError(f"record of {record.key!r}: time {at!r} is not finite")
    fields = record.as_dict()
    history = record.history
    fields["history"] = []  # the h:K field's lines replace it when read (_with_history)
    fields["v"] = RECORD_VERSION
    text = orjson.dumps(fields)
    if entry.appended is None:
        new, op = history, "r"
    else:
        new, op = history[len(history) - entry.appended :] if entry.appended else (), "a"
    cleaned = _marked(entry)
    args: list[str | int | bytes] = [key, op, text, len(cleaned), len(history), len(new)]
    args += map(orjson.dumps, new)
    return args, cleaned


def _marked(entry: StoreWrite) -> list[str]:
    """``entry.cleaned`` without repeats, the newest ``_MARKED`` of them."""
    return list(dict.fromkeys(entry.cleaned[-_MARKED:])) if entry.cleaned else []


def _as_record(text: bytes, room: str, key: str) -> SessionRecord:
    return parse_record(text, room=room, key=key)


def _with_history(text: bytes | str, history: bytes | str | None) -> bytes:
    """The stored record and its history lines as the one JSON text :func:`parse_record` reads."""
    body = text.encode() if isinstance(text, str) else text
    if not history or not body.rstrip().endswith(b"}"):
        return body  # no history lines, or not a JSON object (parse_record says why)
    lines = history.encode() if isinstance(history, str) else history
    # A later key wins in JSON: these lines replace the record's empty "history".
    return body.rstrip()[:-1] + b',"history":[' + lines.replace(b"\n", b",") + b"]}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _packed_field(value: str) -> str:
    """``value`` as a field of the claims' one argument: as it is, or, when it holds a
    separator (or starts with the escape), ``\x1d`` and its UTF-8 in hex (the claim
    script decodes it). Keys are quoted already; LiveKit sids and owner names never
    need it, and an odd one costs its claim nothing but the escape."""
    if "\x1e" in value or "\x1f" in value or value[:1] == "\x1d":
        return "\x1d" + value.encode().hex()
    return value


def _quote(name: str) -> str:
    # Encodes ':' (the separator), the hash-tag braces and every glob character.
    # Most names need nothing: one regex match instead of quote()'s pass.
    return name if _PLAIN.fullmatch(name) else quote(name, safe="")


async def _settled(call: Awaitable[_T]) -> _T | Exception:
    """``await call``, or the error it raised (a failed call fails only its own claims)."""
    try:
        return await call
    except Exception as exc:
        return exc
