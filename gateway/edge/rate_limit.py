"""Per-key limits, per key and per route class, several windows at once.

A key's own limits (or the configured default) apply across all its routes; the limits of
`limits.routes` apply to the key's use of that route class. Both are checked and counted
in one call to the limiter, so the answer is exact under concurrency. The decision is
kept on the request; `gateway.edge.headers` writes the ``RateLimit`` headers from it.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.config import LimitsConfig
from gateway.edge.client_ip import request_ip
from gateway.edge.headers import limit_decision_key
from gateway.edge.principal import Principal, principal_key
from gateway.errors import RateLimited
from gateway.ops.metrics import metrics_key
from gateway.resilience.limiter import Decision, Window, limiter_key
from gateway.routing import route_spec_key

__all__ = ["rate_limit_middleware"]


def rate_limit_middleware(config: LimitsConfig) -> Middleware:
    # Windows depend only on (principal, route class): built once, reused by every request.
    cache: dict[tuple[Principal, str], tuple[Window, ...]] = {}

    def windows_for(principal: Principal, route_class: str) -> tuple[Window, ...]:
        found = cache.get((principal, route_class))
        if found is None:
            bucket = f"key:{principal.key_id}"
            rates = principal.limits if principal.limits is not None else config.default
            found = tuple(Window(bucket, rate) for rate in rates)
            found += tuple(
                Window(f"{bucket}:{route_class}", rate)
                for rate in config.routes.get(route_class, ())
            )
            if len(cache) > 100_000:
                cache.clear()
            cache[(principal, route_class)] = found
        return found

    ip_rates = config.per_ip_authenticated
    ip_cache: dict[str, tuple[Window, ...]] = {}

    def ip_windows(ip: str) -> tuple[Window, ...]:
        found = ip_cache.get(ip)
        if found is None:
            if len(ip_cache) > 100_000:
                ip_cache.clear()
            found = ip_cache[ip] = tuple(Window(f"ip-auth:{ip}", r) for r in ip_rates)
        return found

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = request.get(principal_key)
        spec = request.get(route_spec_key)
        if principal is None or spec is None or not spec.limited:
            return await handler(request)
        key_windows = windows_for(principal, spec.route_class)
        windows = key_windows + ip_windows(request_ip(request)) if ip_rates else key_windows
        if not windows:
            return await handler(request)
        decision = await request.app[limiter_key].hit(windows)
        if decision.allowed and key_windows and len(windows) > len(key_windows):
            # The headers describe the key's own limits; the address's ceiling shows
            # only when it is what refuses.
            decision = Decision(True, decision.windows[: len(key_windows)])
        request[limit_decision_key] = decision
        if not decision.allowed:
            refused_by_key = any(w.remaining == 0 for w in decision.windows[: len(key_windows)])
            limit = "key" if refused_by_key else "ip"
            request.app[metrics_key].limit_rejections.labels(limit, spec.route_class).inc()
            raise RateLimited(
                f"rate limit exceeded ({decision.tightest.rate.text}); retry later",
                retry_after=decision.retry_after_s,
            )
        return await handler(request)

    return rate_limit
