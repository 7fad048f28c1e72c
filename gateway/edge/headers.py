"""Headers every answer carries, added just before the headers are sent.

Runs from `on_response_prepare`, so streamed answers and error answers get them too:
the request id, security headers, and the rate limit state of the request's key.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Final

from aiohttp import web

from gateway.config.rates import Rate
from gateway.edge.request_state import request_state_key
from gateway.ops.lifecycle import state_key
from gateway.resilience.limiter import Decision

__all__ = ["add_common_headers", "rate_limit_headers"]

_SECURITY: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_JSON_CSP: Final = "default-src 'none'; frame-ancestors 'none'"
_STRICT_CSP_TYPES: Final = frozenset(
    {"application/json", "text/event-stream", "text/plain", "application/xml"}
)


@functools.lru_cache(maxsize=4096)
def _policies(rates: tuple[Rate, ...]) -> str:
    return ", ".join(
        f'"{rate.policy_name}";q={rate.count};w={math.ceil(rate.period_s)}' for rate in rates
    )


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The IETF pair (draft-10: ``RateLimit-Policy`` and ``RateLimit``) and the legacy trio."""
    policies = _policies(tuple(w.rate for w in decision.windows))
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
    state = request.get(request_state_key)
    if state is not None:
        headers["X-Request-ID"] = state.usage.request_id or ""
    for name, value in _SECURITY.items():
        headers.setdefault(name, value)
    if "Content-Security-Policy" not in headers and response.content_type in _STRICT_CSP_TYPES:
        headers["Content-Security-Policy"] = _JSON_CSP
    headers.setdefault("Cache-Control", "no-store")
    if state is None:
        return
    total_ms = (time.perf_counter() - state.started) * 1000
    headers["Server-Timing"] = (
        f"total;dur={total_ms:.1f}, upstream;dur={state.usage.upstream_s * 1000:.1f}"
    )
    headers["X-Process-Time"] = f"{total_ms / 1000:.4f}"
    if state.limits is not None:
        headers.update(rate_limit_headers(state.limits))
