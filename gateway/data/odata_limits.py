"""Rate limits for OData reads, which a BI refresh makes as a run of next links.

The first page of a read is admitted like any request: the key's limits, the ``odata``
route class's limits (``limits.routes.odata``) and the address's ceiling. Its next links
carry a signed ``$skiptoken``; a page reached through a valid one is part of a read that
was already admitted, so it is counted apart, against ``odata.page_limits`` per key
(default 6000/minute and 200000/hour), and a 1,000,000-row refresh is never cut off
midway by the per-minute limit that admitted it. The entity-set route is therefore not
limited by the front door's middleware but here, with the same limiter and headers.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import config_key
from gateway.edge.client_ip import request_ip
from gateway.edge.principal import principal_key
from gateway.edge.request_state import request_state_key
from gateway.errors import RateLimited
from gateway.ops.metrics import metrics_key
from gateway.resilience.limiter import Decision, Window, limiter_key

__all__ = ["admit"]


async def admit(request: web.Request, *, continuation: bool) -> None:
    """Count this page against the right windows; `RateLimited` when one is spent."""
    config = request.app[config_key]
    principal = request[principal_key]
    bucket = f"key:{principal.key_id}"
    if continuation:
        key_windows = tuple(Window(f"{bucket}:odata-pages", r) for r in config.odata.page_limits)
        windows = key_windows
    else:
        rates = principal.limits if principal.limits is not None else config.limits.default
        key_windows = tuple(Window(bucket, r) for r in rates) + tuple(
            Window(f"{bucket}:odata", r) for r in config.limits.routes.get("odata", ())
        )
        ip = request_ip(request)
        ip_rates = config.limits.per_ip_authenticated
        windows = key_windows + tuple(Window(f"ip-auth:{ip}", r) for r in ip_rates)
    if not windows:
        return
    decision = await request.app[limiter_key].hit(windows)
    if decision.allowed and key_windows and len(windows) > len(key_windows):
        decision = Decision(True, decision.windows[: len(key_windows)])
    request[request_state_key].limits = decision
    if not decision.allowed:
        refused_by_key = any(w.remaining == 0 for w in decision.windows[: len(key_windows)])
        kind = "key" if refused_by_key else "ip"
        request.app[metrics_key].limit_rejections.labels(kind, "odata").inc()
        raise RateLimited(
            f"rate limit exceeded ({decision.tightest.rate.text}); retry later",
            retry_after=decision.retry_after_s,
        )
