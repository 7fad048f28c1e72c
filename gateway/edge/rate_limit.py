"""Per-key limits, per key and per route class, several windows at once.

A key's own limits (or the configured default) apply across all its routes; the limits of
`limits.routes` apply to the key's use of that route class. Both, and the address's
``limits.per_ip_authenticated`` ceiling, are checked and counted in one call to the
limiter, so the answer is exact under concurrency. The decision is kept on the request;
`gateway.edge.headers` writes the ``RateLimit`` headers from it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import LimitsConfig
from gateway.edge.principal import Principal
from gateway.edge.request_state import request_state_key
from gateway.errors import RateLimited
from gateway.ops.metrics import Metrics
from gateway.resilience.limiter import Decision, Limiter, Window

__all__ = ["RateLimits"]

_MAX_CACHED = 100_000


class RateLimits:
    __slots__ = ("_config", "_ip_rates", "_ip_windows", "_key_windows", "_limiter", "_metrics")

    def __init__(self, config: LimitsConfig, limiter: Limiter, metrics: Metrics) -> None:
        self._config = config
        self._limiter = limiter
        self._metrics = metrics
        self._ip_rates = config.per_ip_authenticated
        # Windows depend only on (principal, route class) and on the address: built once.
        self._key_windows: dict[tuple[Principal, str], tuple[Window, ...]] = {}
        self._ip_windows: dict[str, tuple[Window, ...]] = {}

    def _windows_for(self, principal: Principal, route_class: str) -> tuple[Window, ...]:
        found = self._key_windows.get((principal, route_class))
        if found is None:
            bucket = f"key:{principal.key_id}"
            rates = principal.limits if principal.limits is not None else self._config.default
            found = tuple(Window(bucket, rate) for rate in rates)
            found += tuple(
                Window(f"{bucket}:{route_class}", rate)
                for rate in self._config.routes.get(route_class, ())
            )
            if len(self._key_windows) > _MAX_CACHED:
                self._key_windows.clear()
            self._key_windows[(principal, route_class)] = found
        return found

    def _address_windows(self, ip: str) -> tuple[Window, ...]:
        found = self._ip_windows.get(ip)
        if found is None:
            if len(self._ip_windows) > _MAX_CACHED:
                self._ip_windows.clear()
            found = self._ip_windows[ip] = tuple(Window(f"ip-auth:{ip}", r) for r in self._ip_rates)
        return found

    async def check(
        self, request: web.Request, principal: Principal, route_class: str, ip: str
    ) -> None:
        key_windows = self._windows_for(principal, route_class)
        windows = key_windows + self._address_windows(ip) if self._ip_rates else key_windows
        if not windows:
            return
        decision = await self._limiter.hit(windows)
        if decision.allowed and key_windows and len(windows) > len(key_windows):
            # The headers describe the key's own limits; the address's ceiling shows
            # only when it is what refuses.
            decision = Decision(True, decision.windows[: len(key_windows)])
        request[request_state_key].limits = decision
        if not decision.allowed:
            refused_by_key = any(w.remaining == 0 for w in decision.windows[: len(key_windows)])
            limit = "key" if refused_by_key else "ip"
            self._metrics.limit_rejections.labels(limit, route_class).inc()
            raise RateLimited(
                f"rate limit exceeded ({decision.tightest.rate.text}); retry later",
                retry_after=decision.retry_after_s,
            )
