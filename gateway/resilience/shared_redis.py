"""One Redis connection for shared state, behind a short timeout and its own breaker.

Every user of Redis (limits, outbound quotas, the cache) goes through `SharedRedis`'s
`command` and `script`: a call that fails or takes longer than `timeout_s` counts against
the breaker, and while the breaker is open callers are told at once (`RedisDown`) so they
fall back without waiting. Half-open after `reset_s`: one call probes, and success puts
Redis back in use. The connection is `gateway.resilience.resp`'s pipelined client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from backends.base import Health
from gateway.errors import CircuitOpen
from gateway.ops.metrics import Metrics
from gateway.resilience.breaker import BreakerState, CircuitBreaker
from gateway.resilience.resp import (
    Arg,
    RedisConnectionError,
    RedisReplyError,
    RespClient,
    Script,
)

__all__ = ["RedisDown", "RedisHealth", "SharedRedis"]

T = TypeVar("T")
_log = logging.getLogger("tollway.redis")


class RedisDown(Exception):
    """Redis did not answer (or is known to be down): use the local fallback."""


class SharedRedis:
    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        prefix: str = "tollway:",
        timeout_s: float = 0.25,
        failures: int = 3,
        reset_s: float = 2.0,
    ) -> None:
        # Imported here, not at the top: without `redis:` configured the process never
        # loads redis-py (and the cryptography it pulls in), some 13 MB of memory.

        self.prefix = prefix
        self.timeout_s = timeout_s
        self.client = RespClient(url, connect_timeout_s=timeout_s)
        self._metrics = metrics
        self.breaker = CircuitBreaker(
            "redis", failures=failures, reset_s=reset_s, on_change=self._changed
        )
        metrics.redis_fallback.set(0)

    def _changed(self, name: str, state: BreakerState) -> None:
        down = state is not BreakerState.CLOSED
        self._metrics.redis_fallback.set(1 if down else 0)
        if state is BreakerState.OPEN:
            _log.warning("redis unavailable: limits and cache fall back to this process")
        elif state is BreakerState.CLOSED:
            _log.info("redis is back: shared limits and cache in use again")

    @property
    def up(self) -> bool:
        return self.breaker.state is BreakerState.CLOSED

    async def command(self, *args: Arg) -> Any:
        """One command's reply; `RedisDown` when Redis failed, was slow or is known down."""
        return await self._guarded(self.client.command(*args, timeout_s=self.timeout_s))

    async def script(self, script: Script, keys: list[str], args: list[Arg]) -> Any:
        return await self._guarded(script(self.client, keys, args, self.timeout_s))

    async def _guarded(self, call: Awaitable[T]) -> T:
        try:
            probe = self.breaker.acquire()
        except CircuitOpen:
            if asyncio.iscoroutine(call):
                call.close()
            raise RedisDown() from None
        try:
            result = await call
        except (RedisConnectionError, RedisReplyError, OSError, TimeoutError) as exc:
            self._metrics.redis_errors.inc()
            self.breaker.record_failure(probe, type(exc).__name__)
            raise RedisDown() from exc
        except BaseException:
            self.breaker.release(probe)
            raise
        self.breaker.record_success(probe)
        return result

    def describe(self) -> dict[str, Any]:
        return {"in_use": self.up, **self.breaker.describe()}

    async def close(self) -> None:
        await self.client.close()


class RedisHealth:
    """Redis as `/health/detailed` shows it; never required for readiness."""

    name = "redis"
    required = False

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis

    async def health(self) -> Health:
        try:
            await self._redis.command("PING")
        except RedisDown:
            return Health(False, "unavailable: limits and cache run in this process")
        return Health(True)

    def describe(self) -> dict[str, Any]:
        return self._redis.describe()


shared_redis_key: web.AppKey[SharedRedis | None] = web.AppKey("shared_redis")
