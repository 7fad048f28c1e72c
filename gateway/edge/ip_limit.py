"""Limits per client IP, before any key is looked up.

Requests without a key, and requests whose key turned out to be wrong, count against the
IP's ``limits.per_ip`` (default 60/minute and 1000/hour). Once an IP has used that up,
every request it sends with a key is refused with 429 before the key is looked up, so a
flood of guessed keys costs nothing but this check. Authenticated traffic is held to the
separate, higher ``limits.per_ip_authenticated`` ceiling by the rate limit check, so
many users behind one NAT are not starved. Probes and ``/metrics`` are exempt.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import LimitsConfig
from gateway.edge.request_state import request_state_key
from gateway.errors import RateLimited
from gateway.ops.metrics import Metrics
from gateway.resilience.limiter import Decision, Limiter, Window

__all__ = ["IpLimits"]

_MAX_CACHED = 50_000


class IpLimits:
    """The per-IP allowance for requests without a (valid) key."""

    __slots__ = ("_limiter", "_metrics", "_rates", "_windows")

    def __init__(self, config: LimitsConfig, limiter: Limiter, metrics: Metrics) -> None:
        self._rates = config.per_ip
        self._limiter = limiter
        self._metrics = metrics
        self._windows: dict[str, tuple[Window, ...]] = {}

    @property
    def on(self) -> bool:
        return bool(self._rates)

    def windows(self, ip: str) -> tuple[Window, ...]:
        found = self._windows.get(ip)
        if found is None:
            if len(self._windows) >= _MAX_CACHED:
                self._windows.clear()
            found = self._windows[ip] = tuple(Window(f"ip:{ip}", rate) for rate in self._rates)
        return found

    async def check(
        self, request: web.Request, windows: tuple[Window, ...], route_class: str, *, keyed: bool
    ) -> None:
        """Refuse an address that spent its allowance; count a request that has no key
        (one with a key is counted only if the key turns out wrong: `spend`)."""
        decision = await self._limiter.hit(windows, cost=0 if keyed else 1)
        if not decision.allowed:
            raise self._refuse(request, decision, route_class)

    async def spend(self, windows: tuple[Window, ...]) -> None:
        """A wrong key spends the address's allowance."""
        await self._limiter.hit(windows)

    def _refuse(self, request: web.Request, decision: Decision, route_class: str) -> RateLimited:
        request[request_state_key].limits = decision
        self._metrics.limit_rejections.labels("ip", route_class).inc()
        return RateLimited(
            "too many requests without a valid key from this address; retry later",
            retry_after=decision.retry_after_s,
            code="ip_rate_limit_exceeded",
        )
