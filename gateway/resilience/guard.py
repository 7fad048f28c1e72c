"""The one resilience wrapper every backend sits behind, the same way for all kinds.

Per backend: a circuit breaker, a bulkhead (cap on in-flight calls), an overall deadline
that includes retries, an outbound rate limit that waits a bounded time for the
provider's quota, and retries with jittered exponential backoff — only for failures a
retry can help (`gateway.resilience.retries`: connect errors, resets, 408, 409, 429 and
every 5xx), honouring the upstream's Retry-After when it fits inside the deadline. A
timed-out upstream is never retried on the same backend: the caller falls over instead.

A call made for a model (LLM backends) also passes that model's own breaker: what a model
does (5xx, timeouts, resets) opens only its breaker, so one overloaded model never routes
another around its primary; what the connection does (refused, DNS, TLS) still counts for
the backend as a whole. Models named in the config have their breakers from the start
(and their own metric labels); others get one on first use, a bounded number of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
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
from gateway.resilience.breaker import CircuitBreaker
from gateway.resilience.model_breakers import Breakers
from gateway.resilience.retries import RETRYABLE_REASONS, backoff_delay, failure_reason

__all__ = ["Guard", "LocalOutboundLimiter", "OutboundLimiter"]

T = TypeVar("T")
B = TypeVar("B")

_log = logging.getLogger("tollway.resilience")


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
    """A backend wrapped in breakers, bulkhead, deadline, outbound limit and retries."""

    def __init__(
        self,
        backend: B,
        config: BackendConfig,
        metrics: Metrics,
        *,
        outbound: OutboundLimiter | None = None,
        required: bool = False,
        models: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.backend = backend
        self.config = config
        self.name = config.name
        self.required = required
        self._metrics = metrics
        self._clock = clock
        self._rand = rand
        self._in_flight = 0
        self._timings: dict[str, Any] = {}
        """`upstream_duration` children by status, looked up once each."""
        limit = config.outbound_limit
        self.outbound = outbound or (
            LocalOutboundLimiter(config.name, limit.count, limit.period_s) if limit else None
        )
        self.breakers = Breakers(
            self.name, config.breaker, metrics, models=models, clock=clock, rand=rand
        )
        self.breaker = self.breakers.whole
        """The backend as a whole: every failure of a call made without a model, and
        connection failures of calls made for one."""

    def breaker_for(self, model: str) -> CircuitBreaker:
        """The breaker of `model` (its upstream name) on this backend."""
        return self.breakers.for_model(model)

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
    async def attempt(self, model: str | None = None) -> AsyncIterator[None]:
        """One try against the backend (for `model`, when given): admitted by the
        breakers and the bulkhead, its outcome recorded. Raises `CircuitOpen` or
        `BackendOverloaded` without calling."""
        whole = self.breaker
        probe = False if whole.quiet else whole.acquire()
        own: CircuitBreaker | None = None
        own_probe = False
        if model is not None:
            own = self.breakers.models.get(model) or self.breakers.for_model(model)
            if not own.quiet:
                try:
                    own_probe = own.acquire()
                except BaseException:
                    whole.release(probe)
                    raise
        if self._in_flight >= self.config.max_in_flight:
            whole.release(probe)
            if own is not None:
                own.release(own_probe)
            raise BackendOverloaded(
                f"backend {self.name!r} has too many requests in flight",
                backend=self.name,
                retry_after=1,
            )
        self._in_flight += 1
        started = time.perf_counter()
        status = "cancelled"
        try:
            yield
            status = "ok"
            if not whole.quiet:
                whole.record_success(probe)
            if own is not None and not own.quiet:
                own.record_success(own_probe)
        except BackendError as error:
            status = str(error.http_status)
            self.breakers.record_error(error, probe, own, own_probe)
            raise
        except TimeoutError:
            status = "timeout"
            if own is None:
                whole.record_failure(probe, "timeout")
            else:
                whole.release(probe)
                own.record_failure(own_probe, "timeout")
            raise
        except BaseException as error:  # the caller's mistake (bad SQL, say), or a cancel
            if isinstance(error, TollwayError):
                status = str(error.http_status)
            whole.release(probe)
            if own is not None:
                own.release(own_probe)
            raise
        finally:
            self._in_flight -= 1
            elapsed = time.perf_counter() - started
            timing = self._timings.get(status)
            if timing is None:
                timing = self._timings[status] = self._metrics.upstream_duration.labels(
                    self.name, status
                )
            timing.observe(elapsed)
            usage = current_usage.get()
            if usage is not None:
                usage.upstream_s += elapsed

    def record_stream_failure(self, model: str | None, reason: str) -> None:
        """A stream that started well failed later (cut, stall, malformed): count it on
        the model's breaker (the backend's, without a model)."""
        breaker = self.breaker if model is None else self.breakers.for_model(model)
        breaker.record_failure(False, reason)

    async def call(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
        retries: int | None = None,
        model: str | None = None,
    ) -> T:
        """Run `op` under the guard, retrying what a retry can help, within the deadline."""
        deadline = deadline if deadline is not None else self.deadline()
        retries = self.config.retries if retries is None else retries
        attempt = 0
        while True:
            await self.wait_for_quota(deadline)
            try:
                async with self.attempt(model), asyncio.timeout_at(deadline):
                    return await op()
            except TimeoutError:
                raise BackendTimeout(
                    f"backend {self.name!r} did not answer in time", backend=self.name
                ) from None
            except BackendError as error:
                delay = self._retry_delay(error, attempt, retries, deadline, model)
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
        model: str | None = None,
        ready: Callable[[T], bool] | None = None,
    ) -> AsyncIterator[T]:
        """The items of `open_stream()`, under the guard for the stream's whole life.

        Opening and the first item are retried like `call` (the first item must come
        within `first_item_timeout_s` and the deadline; past it the upstream request is
        closed and `BackendTimeout` raised); with `ready`, items are held back until one
        satisfies it (an LLM's first token, not a preamble), within the same time. Once
        an item has been yielded, failures propagate to the consumer, since its client
        has already seen bytes. The bulkhead slot is held until the stream ends. Close
        it with `aclosing`.
        """
        loop = asyncio.get_running_loop()
        deadline = deadline if deadline is not None else self.deadline()
        retries = self.config.retries if retries is None else retries
        attempt = 0
        yielded = False
        while True:
            await self.wait_for_quota(deadline)
            try:
                async with self.attempt(model):
                    items = open_stream()
                    try:
                        first_by = min(deadline, loop.time() + first_item_timeout_s)
                        held: list[T] = []
                        try:
                            async with asyncio.timeout_at(first_by):
                                held.append(await anext(items))
                                while ready is not None and not ready(held[-1]):
                                    held.append(await anext(items))
                        except StopAsyncIteration:
                            if not held:
                                return
                        except TimeoutError:
                            raise BackendTimeout(
                                f"backend {self.name!r} sent nothing in time", backend=self.name
                            ) from None
                        yielded = True
                        for item in held:
                            yield item
                        async for item in items:
                            yield item
                    finally:
                        await items.aclose()  # type: ignore[attr-defined]
                return
            except BackendError as error:
                if yielded:
                    raise
                delay = self._retry_delay(error, attempt, retries, deadline, model)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    def _retry_delay(
        self, error: BackendError, attempt: int, retries: int, deadline: float, model: str | None
    ) -> float | None:
        """How long to wait before trying again, or None when a retry cannot help or
        would not finish inside the deadline."""
        reason = failure_reason(error)
        if reason not in RETRYABLE_REASONS or attempt >= retries:
            return None
        delay = backoff_delay(attempt, error.retry_after, self._rand)
        if asyncio.get_running_loop().time() + delay >= deadline:
            return None
        self._metrics.retries.labels(self.name, reason).inc()
        _log.info(
            "retrying",
            extra={
                "backend": self.name,
                "model": model,
                "reason": reason,
                "attempt": attempt + 2,
                "delay_s": round(delay, 3),
            },
        )
        return delay

    async def health(self) -> Health:
        check: Callable[[], Awaitable[Health]] | None = getattr(self.backend, "health", None)
        if check is None:
            return Health(True)
        started = time.perf_counter()
        health = await check()
        return Health(health.ok, health.detail, health.latency_s or time.perf_counter() - started)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "type": self.config.type,
            "in_flight": self._in_flight,
            **self.breaker.describe(),
        }
        if self.breakers.models:
            described["models"] = self.breakers.describe_models()
        return described
