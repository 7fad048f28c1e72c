"""A key this replica does not know yet is looked up in the state store before it is
refused, so a key created on any replica works on every replica at once.

The key table is refreshed by polling (`gateway.edge.key_sync`); between a key's
creation on one replica and the next poll on another, that other replica would answer
401. Instead, an unknown key costs one lookup by its digest, and the lookup is kept
cheap for the store whatever a client sends:

* coalesced: concurrent requests with the same unknown key share one query;
* bounded: a request waits at most ``server.key_lookup_timeout_s`` (0 turns lookups off);
* rate-limited per client address (``limits.key_lookups_per_ip``, default 30/minute): past
  it, the key is refused from memory, as before;
* negatively cached: a key the store did not know is refused unasked for
  ``server.unknown_key_cache_s`` (default 2 s), in a bounded table, so a flood of bad
  keys reaches the store at most once per key per interval, and never past the limit.

A key found is added to this replica's table at once (revoked: to its refusals).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from gateway.config.keyhash import key_digest
from gateway.config.rates import Rate
from gateway.edge.keytable import KeyTable, principal_from_stored
from gateway.edge.principal import Principal
from gateway.resilience.limiter import LocalLimiter, Window
from gateway.state.store import KeyQueries, StoredKey, StoreUnavailable

__all__ = ["UnknownKeys"]

_log = logging.getLogger("tollway.keys")

_MAX_REMEMBERED: Final = 50_000


class UnknownKeys:
    def __init__(
        self,
        queries: KeyQueries,
        table: KeyTable,
        *,
        per_ip: tuple[Rate, ...],
        negative_s: float,
        timeout_s: float,
        counter: Any = None,
    ) -> None:
        self._queries = queries
        self._table = table
        self._per_ip = per_ip
        self._negative_s = negative_s
        self._timeout_s = timeout_s
        self._counter = counter
        self._limiter = LocalLimiter()
        self._unknown: dict[str, float] = {}
        """Digest → until when (monotonic) the store is not asked again."""
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}

    def _count(self, result: str) -> None:
        if self._counter is not None:
            self._counter.labels(result).inc()

    async def look_up(self, key: str, client_ip: str) -> Principal | None:
        """The principal of `key` if the store knows it (and it is usable), else None."""
        if self._timeout_s <= 0:
            return None
        digest = key_digest(key)
        now = time.monotonic()
        until = self._unknown.get(digest)
        if until is not None and until > now:
            self._count("cached")
            return None
        pending = self._pending.get(digest)
        if pending is None:
            windows = tuple(Window(f"key-lookup:{client_ip}", rate) for rate in self._per_ip)
            if windows and not self._limiter.hit_now(windows).allowed:
                self._count("limited")
                return None
            pending = asyncio.ensure_future(self._fetch(digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda _done: self._pending.pop(digest, None))
        # shield: a client that hangs up does not cancel the lookup others wait on
        return await asyncio.shield(pending)

    async def _fetch(self, digest: str) -> Principal | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                stored = await self._queries.by_digest(digest)
        except (StoreUnavailable, TimeoutError) as exc:
            self._count("failed")
            _log.warning("key lookup failed", extra={"error": type(exc).__name__})
            return None
        principal = self._learn(digest, stored) if stored is not None else None
        if principal is None:
            self._remember_unknown(digest)
            self._count("unknown")
            return None
        self._count("found")
        return principal

    def _learn(self, digest: str, key: StoredKey) -> Principal | None:
        """Put what the store said about `digest` in the table; the principal if usable."""
        now = time.time()
        if key.revoked_at is not None:
            self._table.refuse(digest, key.id, "revoked")
            return None
        if digest == key.digest:
            principal = principal_from_stored(key)
        elif (key.previous_valid_until or 0) > now:  # the previous secret, in its grace
            until = key.previous_valid_until
            if key.expires_at is not None and until is not None:
                until = min(until, key.expires_at)
            principal = principal_from_stored(key, expires_at=until)
        else:
            return None
        self._table.add(digest, principal)
        return self._table.lookup_digest(digest, now)

    def _remember_unknown(self, digest: str) -> None:
        now = time.monotonic()
        if len(self._unknown) >= _MAX_REMEMBERED:
            self._unknown = {d: t for d, t in self._unknown.items() if t > now}
            if len(self._unknown) >= _MAX_REMEMBERED:
                self._unknown.clear()  # a flood of distinct keys: start over, stay bounded
        self._unknown[digest] = now + self._negative_s
