"""The response cache: tenant-safe keys, bounded memory or Redis, and single-flight.

A key is the SHA-256 of everything that can change an answer — tenant, route, backend,
model or dataset (with its definition's version) and the body in canonical form — and
never the caller's key. Entries carry a format version in their key, so an upgrade
never reads an older layout. Only complete successful answers are stored.

Stores: `MemoryStore`, an LRU bounded by entries and bytes (aiocache's memory backend is
unbounded, the out-of-memory bug other gateways shipped), and `RedisStore`, shared by
replicas, which degrades to a miss while Redis is down. Identical concurrent misses make
one upstream call: in-process through a future per key, across replicas through a short
Redis lock whose waiters poll for the entry for a bounded time, then call themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

from gateway.config import CacheConfig
from gateway.ops.metrics import Metrics
from gateway.resilience.shared_redis import RedisDown, SharedRedis

__all__ = ["CacheEntry", "MemoryStore", "RedisStore", "ResponseCache", "cache_key"]

FORMAT: Final = "v1"
_IGNORED_FIELDS: Final = frozenset({"user", "metadata"})
"""Body fields that cannot change an answer."""
_LOCK_MS: Final = 10_000
_WAIT_FOR_OTHER_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class CacheEntry:
    status: int
    content_type: str
    body: bytes
    stored_at: float

    def encode(self) -> bytes:
        head = orjson.dumps([self.status, self.content_type, self.stored_at])
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CacheEntry | None:
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            status, content_type, stored_at = orjson.loads(head)
        except (orjson.JSONDecodeError, ValueError):
            return None
        return cls(int(status), str(content_type), body, float(stored_at))


def cache_key(*parts: Any) -> str:
    """The key for an answer made of `parts`; a body among them should be canonical."""
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{FORMAT}:{digest}"


def canonical_body(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _IGNORED_FIELDS}


class Store(Protocol):
    async def get(self, key: str) -> CacheEntry | None: ...

    async def set(self, key: str, entry: CacheEntry, ttl_s: float) -> None: ...


class MemoryStore:
    def __init__(self, *, max_entries: int, max_bytes: int, metrics: Metrics) -> None:
        self._entries: OrderedDict[str, tuple[CacheEntry, float]] = OrderedDict()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._metrics = metrics

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> CacheEntry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        entry, expires = found
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def set(self, key: str, entry: CacheEntry, ttl_s: float) -> None:
        if key in self._entries:
            self._drop(key)
        size = len(entry.body) + 64
        if size > self.max_bytes:
            return
        self._entries[key] = (entry, time.monotonic() + ttl_s)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._metrics.cache_entries.set(len(self._entries))
        self._metrics.cache_bytes.set(self._bytes)

    def _drop(self, key: str) -> None:
        entry, _ = self._entries.pop(key)
        self._bytes -= len(entry.body) + 64


class RedisStore:
    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis

    def _key(self, key: str) -> str:
        return f"{self._redis.prefix}cache:{key}"

    async def get(self, key: str) -> CacheEntry | None:
        try:
            raw = await self._redis.command("GET", self._key(key))
        except RedisDown:
            return None
        if not raw:
            return None
        return CacheEntry.decode(raw if isinstance(raw, bytes) else raw.encode())

    async def set(self, key: str, entry: CacheEntry, ttl_s: float) -> None:
        try:
            await self._redis.command(
                "SET", self._key(key), entry.encode(), "PX", int(ttl_s * 1000)
            )
        except RedisDown:
            pass

    async def lock(self, key: str) -> bool:
        """Claim the right to produce `key`'s answer across replicas (True also when Redis
        is down: then each replica produces its own)."""
        try:
            claimed = await self._redis.command(
                "SET", f"{self._key(key)}:lock", b"1", "NX", "PX", _LOCK_MS
            )
        except RedisDown:
            return True
        return bool(claimed)

    async def unlock(self, key: str) -> None:
        try:
            await self._redis.command("DEL", f"{self._key(key)}:lock")
        except RedisDown:
            pass


Produce = Callable[[], Awaitable[web.StreamResponse]]


class ResponseCache:
    def __init__(self, config: CacheConfig, metrics: Metrics, redis: SharedRedis | None) -> None:
        self.config = config
        self._metrics = metrics
        self.memory = MemoryStore(
            max_entries=config.max_entries, max_bytes=config.max_bytes, metrics=metrics
        )
        self.shared = RedisStore(redis) if redis is not None and config.backend == "redis" else None
        self._flights: dict[str, asyncio.Future[CacheEntry | None]] = {}

    def enabled_for(self, route_class: str) -> bool:
        return route_class in self.config.routes

    async def lookup(self, key: str) -> CacheEntry | None:
        if self.shared is not None:
            return await self.shared.get(key)
        return await self.memory.get(key)

    async def store(self, key: str, entry: CacheEntry) -> None:
        if len(entry.body) > self.config.max_entry_bytes:
            return
        if self.shared is not None:
            await self.shared.set(key, entry, self.config.ttl_s)
        else:
            await self.memory.set(key, entry, self.config.ttl_s)

    async def serve(
        self,
        request: web.Request,
        route_class: str,
        key: str,
        produce: Produce,
        *,
        storable: Callable[[web.StreamResponse], CacheEntry | None],
    ) -> web.StreamResponse:
        """Answer from the cache, or by `produce`, storing what `storable` accepts."""
        directive = request.headers.get("Cache-Control", "").lower()
        if "no-store" in directive:
            self._count(route_class, "bypass")
            return _mark(await produce(), "BYPASS")
        if "no-cache" not in directive:
            started = time.perf_counter()
            entry = await self.lookup(key)
            if entry is not None:
                self._count(route_class, "hit")
                self._metrics.cache_hit_seconds.labels(route_class).observe(
                    time.perf_counter() - started
                )
                return hit_response(entry)
            flight = self._flights.get(key)
            if flight is not None:
                self._metrics.cache_joins.labels(route_class).inc()
                entry = await _wait(flight)
                if entry is not None:
                    self._count(route_class, "hit")
                    return hit_response(entry)
                return _mark(await produce(), "MISS")  # the first one failed: try ourselves
            if self.shared is not None and not await self.shared.lock(key):
                entry = await self._poll_shared(key)
                if entry is not None:
                    self._metrics.cache_joins.labels(route_class).inc()
                    self._count(route_class, "hit")
                    return hit_response(entry)
        self._count(route_class, "miss")
        return await self._lead(key, produce, storable)

    async def _lead(
        self,
        key: str,
        produce: Produce,
        storable: Callable[[web.StreamResponse], CacheEntry | None],
    ) -> web.StreamResponse:
        flight: asyncio.Future[CacheEntry | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        entry: CacheEntry | None = None
        try:
            response = await produce()
            entry = storable(response)
            if entry is not None:
                await self.store(key, entry)
            return _mark(response, "MISS")
        finally:
            self._flights.pop(key, None)
            flight.set_result(entry)
            if self.shared is not None:
                await self.shared.unlock(key)

    async def _poll_shared(self, key: str) -> CacheEntry | None:
        """Another replica is producing this answer: wait for it, for a bounded time."""
        assert self.shared is not None
        deadline = time.monotonic() + _WAIT_FOR_OTHER_S
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            entry = await self.shared.get(key)
            if entry is not None:
                return entry
            delay = min(delay * 2, 0.2)
        return None

    def _count(self, route_class: str, result: str) -> None:
        self._metrics.cache_requests.labels(route_class, result).inc()


async def _wait(flight: asyncio.Future[CacheEntry | None]) -> CacheEntry | None:
    try:
        return await asyncio.wait_for(asyncio.shield(flight), _WAIT_FOR_OTHER_S)
    except TimeoutError:
        return None


def _mark(response: web.StreamResponse, result: str) -> web.StreamResponse:
    if not response.prepared:
        response.headers["X-Cache"] = result
    return response


def hit_response(entry: CacheEntry) -> web.StreamResponse:
    age = max(0, int(time.time() - entry.stored_at))
    headers = {"X-Cache": "HIT", "Age": str(age)}
    if entry.content_type == "text/event-stream":
        return _ReplayedStream(entry.body, headers)
    return web.Response(
        status=entry.status, body=entry.body, content_type=entry.content_type, headers=headers
    )


class _ReplayedStream(web.Response):
    """A stored SSE answer sent again as SSE."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(
            status=200,
            body=body,
            headers={**headers, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"},
        )


def json_entry(response: web.StreamResponse) -> CacheEntry | None:
    """A successful whole JSON answer as an entry; None for anything else."""
    if type(response) is not web.Response or response.status != 200:
        return None
    body = response.body
    if not isinstance(body, bytes):
        return None
    return CacheEntry(200, response.content_type, body, time.time())


response_cache_key = web.AppKey("response_cache", ResponseCache)
