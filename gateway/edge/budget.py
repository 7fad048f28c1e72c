"""Token budgets: ``budget: {tokens: ["1000000/day"]}`` per key, on the LLM routes.

Before the call, a key whose budget is spent gets 429 ``budget_exceeded`` with the time
until the window has room again. After it, the tokens the provider reported (streams
included) are charged, past the limit if need be: spent tokens are spent. Counted in the
app's limiter, so through Redis, and shared by replicas, when Redis is configured.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.edge.principal import principal_key
from gateway.errors import RateLimited
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import usage_key
from gateway.resilience.limiter import Window, limiter_key
from gateway.routing import route_spec_key

__all__ = ["budget_middleware"]

BUDGETED: Final = frozenset(
    {"chat", "embeddings", "responses", "completions", "moderations", "images", "audio"}
)


@web.middleware
async def budget_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    principal = request.get(principal_key)
    spec = request.get(route_spec_key)
    if principal is None or not principal.budget_tokens or spec is None:
        return await handler(request)
    if spec.route_class not in BUDGETED:
        return await handler(request)
    windows = tuple(Window(f"budget:{principal.key_id}", rate) for rate in principal.budget_tokens)
    limiter = request.app[limiter_key]
    decision = await limiter.hit(windows, cost=0)
    if not decision.allowed:
        request.app[metrics_key].budget_rejections.inc()
        raise RateLimited(
            f"this key's token budget ({decision.tightest.rate.text}) is spent; "
            "it refills as the window passes",
            code="budget_exceeded",
            retry_after=decision.retry_after_s,
        )
    try:
        return await handler(request)
    finally:
        usage = request[usage_key]
        spent = usage.tokens_in + usage.tokens_out
        if spent:
            await limiter.charge(windows, spent)
