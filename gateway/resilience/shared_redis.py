"""One Redis connection for shared state, behind a short timeout and its own breaker.

Every user of Redis (limits, outbound quotas, the cache) goes through `SharedRedis.run`:
a call that fails or takes longer than `timeout_s` counts against the breaker, and while
the breaker is open callers are told at once (`RedisDown`) so they fall back without
waiting. Half-open after `reset_s`: one call probes, and success puts Redis back in use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from backends.base import Health
from gateway.errors import CircuitOpen
from gateway.ops.metrics import Metrics
from gateway.resilience.breaker import BreakerState, CircuitBreaker

if TYPE_CHECKING:
    import redis.asyncio as aioredis

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
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self.prefix = prefix
        self.timeout_s = timeout_s
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
        )
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

    async def run(self, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        try:
            probe = self.breaker.acquire()
        except CircuitOpen:
            raise RedisDown() from None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call(self.client)
        except self._errors as exc:
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
        await self.client.aclose()


class RedisHealth:
    """Redis as `/health/detailed` shows it; never required for readiness."""

    name = "redis"
    required = False

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis

    async def health(self) -> Health:
        try:
            await self._redis.run(lambda client: client.ping())
        except RedisDown:
            return Health(False, "unavailable: limits and cache run in this process")
        return Health(True)

    def describe(self) -> dict[str, Any]:
        return self._redis.describe()


shared_redis_key: web.AppKey[SharedRedis | None] = web.AppKey("shared_redis")
