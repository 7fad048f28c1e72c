"""Headers every answer carries, added just before the headers are sent.

Runs from `on_response_prepare`, so streamed answers and error answers get them too:
the request id, security headers, and the rate limit state of the request's key.
"""

from __future__ import annotations

import math
import time
from typing import Final

from aiohttp import web

from gateway.edge.request_id import request_id_key, started_key
from gateway.ops.lifecycle import state_key
from gateway.ops.request_usage import usage_key
from gateway.resilience.limiter import Decision

__all__ = ["add_common_headers", "rate_limit_headers"]

_SECURITY: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_JSON_CSP: Final = "default-src 'none'; frame-ancestors 'none'"


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The IETF pair (draft-10: ``RateLimit-Policy`` and ``RateLimit``) and the legacy trio."""
    policies = ", ".join(
        f'"{w.rate.policy_name}";q={w.rate.count};w={math.ceil(w.rate.period_s)}'
        for w in decision.windows
    )
    tight = decision.tightest
    reset = max(0, math.ceil(tight.reset_s))
    return {
        "RateLimit-Policy": policies,
        "RateLimit": f'"{tight.rate.policy_name}";r={tight.remaining};t={reset}',
        "X-RateLimit-Limit": str(tight.rate.count),
        "X-RateLimit-Remaining": str(tight.remaining),
        "X-RateLimit-Reset": str(reset),
    }


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    if request.app[state_key].draining:
        # aiohttp wrote its Connection header before this hook: set both, so the
        # client is told and the connection really closes after this answer.
        response.force_close()
        headers["Connection"] = "close"
    request_id = request.get(request_id_key)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    for name, value in _SECURITY.items():
        headers.setdefault(name, value)
    if "Content-Security-Policy" not in headers and response.content_type in (
        "application/json",
        "text/event-stream",
        "text/plain",
        "application/xml",
    ):
        headers["Content-Security-Policy"] = _JSON_CSP
    headers.setdefault("Cache-Control", "no-store")
    started = request.get(started_key)
    if started is not None:
        total_ms = (time.perf_counter() - started) * 1000
        usage = request.get(usage_key)
        upstream_ms = usage.upstream_s * 1000 if usage is not None else 0.0
        headers["Server-Timing"] = f"total;dur={total_ms:.1f}, upstream;dur={upstream_ms:.1f}"
        headers["X-Process-Time"] = f"{total_ms / 1000:.4f}"
    decision = request.get(limit_decision_key)
    if decision is not None:
        headers.update(rate_limit_headers(decision))


limit_decision_key = web.RequestKey("limit_decision", Decision)
"""The limiter's decision for this request, written out as the RateLimit headers."""
