"""Limits per client IP, before any key is looked up.

Requests without a key, and requests whose key turned out to be wrong, count against the
IP's ``limits.per_ip`` (default 60/minute and 1000/hour). Once an IP has used that up,
every request it sends with a key is refused with 429 before the key is looked up, so a
flood of guessed keys costs nothing but this check. Authenticated traffic is held to the
separate, higher ``limits.per_ip_authenticated`` ceiling by the rate limit middleware,
so many users behind one NAT are not starved. Probes and ``/metrics`` are exempt.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.config import LimitsConfig
from gateway.edge.auth import presented_key
from gateway.edge.client_ip import request_ip
from gateway.edge.error_answers import route_spec
from gateway.edge.headers import limit_decision_key
from gateway.errors import RateLimited, Unauthorized
from gateway.ops.metrics import metrics_key
from gateway.resilience.limiter import Decision, Window, limiter_key

__all__ = ["ip_limit_middleware"]

_MAX_CACHED = 50_000


def ip_limit_middleware(config: LimitsConfig) -> Middleware:
    rates = config.per_ip
    cache: dict[str, tuple[Window, ...]] = {}

    def windows_for(ip: str) -> tuple[Window, ...]:
        found = cache.get(ip)
        if found is None:
            if len(cache) >= _MAX_CACHED:
                cache.clear()
            found = cache[ip] = tuple(Window(f"ip:{ip}", rate) for rate in rates)
        return found

    def refuse(request: web.Request, decision: Decision, route_class: str) -> RateLimited:
        request[limit_decision_key] = decision
        request.app[metrics_key].limit_rejections.labels("ip", route_class).inc()
        return RateLimited(
            "too many requests without a valid key from this address; retry later",
            retry_after=decision.retry_after_s,
            code="ip_rate_limit_exceeded",
        )

    @web.middleware
    async def ip_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = route_spec(request)
        if not rates or (spec is not None and spec.scope is None):
            return await handler(request)
        route_class = spec.route_class if spec is not None else "unmatched"
        windows = windows_for(request_ip(request))
        limiter = request.app[limiter_key]
        if presented_key(request, basic=True) is None:
            decision = await limiter.hit(windows)
            if not decision.allowed:
                raise refuse(request, decision, route_class)
            return await handler(request)
        decision = await limiter.hit(windows, cost=0)
        if not decision.allowed:
            raise refuse(request, decision, route_class)
        try:
            return await handler(request)
        except Unauthorized:
            await limiter.hit(windows)  # a wrong key spends the address's allowance
            raise

    return ip_limit
