"""The one resilience wrapper every backend sits behind, the same way for all kinds.

Per backend: a circuit breaker, a bulkhead (cap on in-flight calls), an overall deadline
that includes retries, an outbound rate limit that waits a bounded time for the
provider's quota, and retries with exponential backoff and full jitter — only for errors
a retry can help (`BackendError.retryable`: connect errors, resets, 429, 502/503/504),
honouring the upstream's Retry-After when it fits inside the deadline. A timed-out
upstream is never retried on the same backend: the caller falls over instead.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar

from aiolimiter import AsyncLimiter

from backends.base import Health
from gateway.config import BackendConfig
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    OutboundLimited,
    TollwayError,
)
from gateway.ops.metrics import Metrics
from gateway.ops.request_usage import current_usage
from gateway.resilience.breaker import BreakerState, CircuitBreaker

__all__ = ["Guard", "LocalOutboundLimiter", "OutboundLimiter"]

T = TypeVar("T")
B = TypeVar("B")

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0


class OutboundLimiter(Protocol):
    async def acquire(self, max_wait_s: float) -> float:
        """Wait up to `max_wait_s` for one unit of the provider's quota; return the time
        waited, or raise `OutboundLimited` with a Retry-After."""


class LocalOutboundLimiter:
    """The provider's quota counted in this process (aiolimiter's leaky bucket)."""

    def __init__(self, name: str, count: int, period_s: float) -> None:
        self._name = name
        self._limiter = AsyncLimiter(count, period_s)
        self._period_s = period_s
        self._count = count

    async def acquire(self, max_wait_s: float) -> float:
        if self._limiter.has_capacity():
            await self._limiter.acquire()
            return 0.0
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._limiter.acquire(), timeout=max(0.0, max_wait_s))
        except TimeoutError:
            raise OutboundLimited(
                f"backend {self._name!r} is at its provider quota; try again shortly",
                backend=self._name,
                retry_after=self._period_s / self._count,
            ) from None
        return time.monotonic() - started


class Guard(Generic[B]):
    """A backend wrapped in breaker, bulkhead, deadline, outbound limit and retries."""

    def __init__(
        self,
        backend: B,
        config: BackendConfig,
        metrics: Metrics,
        *,
        outbound: OutboundLimiter | None = None,
        required: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.config = config
        self.name = config.name
        self.required = required
        self._metrics = metrics
        self._in_flight = 0
        limit = config.outbound_limit
        self.outbound = outbound or (
            LocalOutboundLimiter(config.name, limit.count, limit.period_s) if limit else None
        )
        self.breaker = CircuitBreaker(
            config.name,
            failures=config.breaker.failures,
            reset_s=config.breaker.reset_s,
            clock=clock,
            on_change=self._breaker_changed,
        )
        metrics.breaker_state.labels(config.name).set(0)

    def _breaker_changed(self, name: str, state: BreakerState) -> None:
        self._metrics.breaker_state.labels(name).set(int(state))
        self._metrics.breaker_transitions.labels(name, state.name.lower()).inc()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def deadline(self, timeout_s: float | None = None) -> float:
        """The loop time by which a call started now must be done."""
        return asyncio.get_running_loop().time() + (timeout_s or self.config.timeout_s)

    async def wait_for_quota(self, deadline: float) -> None:
        if self.outbound is None:
            return
        left = deadline - asyncio.get_running_loop().time()
        waited = await self.outbound.acquire(min(self.config.outbound_wait_s, max(0.0, left)))
        self._metrics.outbound_wait.labels(self.name).observe(waited)

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """One try against the backend: admitted by the breaker and the bulkhead, its
        outcome recorded. Raises `CircuitOpen` or `BackendOverloaded` without calling."""
        probe = self.breaker.acquire()
        if self._in_flight >= self.config.max_in_flight:
            self.breaker.release(probe)
            raise BackendOverloaded(
                f"backend {self.name!r} has too many requests in flight",
                backend=self.name,
                retry_after=1,
            )
        self._in_flight += 1
        started = time.perf_counter()
        status = "error"
        try:
            yield
            status = "ok"
            self.breaker.record_success(probe)
        except BackendError as error:
            status = str(error.http_status)
            if error.breaker_failure:
                self.breaker.record_failure(probe, f"{error.http_status} {error.code}")
            else:
                self.breaker.release(probe)
            raise
        except TimeoutError:
            status = "timeout"
            self.breaker.record_failure(probe, "timeout")
            raise
        except TollwayError as error:  # the caller's mistake (bad SQL, say): not a failure
            status = str(error.http_status)
            self.breaker.release(probe)
            raise
        except BaseException:
            status = "cancelled"
            self.breaker.release(probe)
            raise
        finally:
            self._in_flight -= 1
            elapsed = time.perf_counter() - started
            self._metrics.upstream_duration.labels(self.name, status).observe(elapsed)
            usage = current_usage.get()
            if usage is not None:
                usage.upstream_s += elapsed

    async def call(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
        retries: int | None = None,
    ) -> T:
        """Run `op` under the guard, retrying what a retry can help, within the deadline."""
        deadline = deadline if deadline is not None else self.deadline()
        retries = self.config.retries if retries is None else retries
        attempt = 0
        while True:
            await self.wait_for_quota(deadline)
            try:
                async with self.attempt(), asyncio.timeout_at(deadline):
                    return await op()
            except TimeoutError:
                raise BackendTimeout(
                    f"backend {self.name!r} did not answer in time", backend=self.name
                ) from None
            except BackendError as error:
                delay = self._retry_delay(error, attempt, retries, deadline)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def stream(
        self,
        open_stream: Callable[[], AsyncIterator[T]],
        *,
        first_item_timeout_s: float,
        deadline: float | None = None,
        retries: int | None = None,
    ) -> AsyncIterator[T]:
        """The items of `open_stream()`, under the guard for the stream's whole life.

        Opening and the first item are retried like `call` (the first item must come
        within `first_item_timeout_s` and the deadline); once an item has been yielded,
        failures propagate to the consumer, since its client has already seen bytes.
        The bulkhead slot is held until the stream ends. Close it with `aclosing`.
        """
        loop = asyncio.get_running_loop()
        deadline = deadline if deadline is not None else self.deadline()
        retries = self.config.retries if retries is None else retries
        attempt = 0
        yielded = False
        while True:
            await self.wait_for_quota(deadline)
            try:
                async with self.attempt():
                    items = open_stream()
                    try:
                        first_by = min(deadline, loop.time() + first_item_timeout_s)
                        try:
                            async with asyncio.timeout_at(first_by):
                                first = await anext(items)
                        except StopAsyncIteration:
                            return
                        except TimeoutError:
                            raise BackendTimeout(
                                f"backend {self.name!r} sent nothing in time", backend=self.name
                            ) from None
                        yielded = True
                        yield first
                        async for item in items:
                            yield item
                    finally:
                        await items.aclose()  # type: ignore[attr-defined]
                return
            except BackendError as error:
                delay = None if yielded else self._retry_delay(error, attempt, retries, deadline)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    def _retry_delay(
        self, error: BackendError, attempt: int, retries: int, deadline: float
    ) -> float | None:
        """How long to wait before trying again, or None when a retry cannot help or
        would not finish inside the deadline."""
        if not error.retryable or attempt >= retries:
            return None
        delay = backoff_delay(attempt, error.retry_after)
        if asyncio.get_running_loop().time() + delay >= deadline:
            return None
        self._metrics.retries.labels(self.name).inc()
        return delay

    async def health(self) -> Health:
        check: Callable[[], Awaitable[Health]] | None = getattr(self.backend, "health", None)
        if check is None:
            return Health(True)
        started = time.perf_counter()
        health = await check()
        return Health(health.ok, health.detail, health.latency_s or time.perf_counter() - started)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.config.type,
            "in_flight": self._in_flight,
            **self.breaker.describe(),
        }


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Full jitter on an exponential ceiling; the upstream's Retry-After wins when given."""
    if retry_after is not None and retry_after > 0:
        return retry_after
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2**attempt)))
