"""Token budgets: ``budget: {tokens: ["1000000/day"]}`` per key, on the LLM routes.

Before the call, a key whose budget is spent gets 429 ``budget_exceeded`` with the time
until the window has room again. After it, the tokens the provider reported (streams
included) are charged, past the limit if need be: spent tokens are spent. Counted in the
app's limiter, so through Redis, and shared by replicas, when Redis is configured.
"""

from __future__ import annotations

from typing import Final

from gateway.edge.principal import Principal
from gateway.errors import RateLimited
from gateway.ops.metrics import Metrics
from gateway.ops.request_usage import RequestUsage
from gateway.resilience.limiter import Limiter, Window

__all__ = ["BUDGETED", "Budgets"]

BUDGETED: Final = frozenset(
    {"chat", "embeddings", "responses", "completions", "moderations", "images", "audio"}
)


class Budgets:
    __slots__ = ("_limiter", "_metrics", "_windows")

    def __init__(self, limiter: Limiter, metrics: Metrics) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._windows: dict[Principal, tuple[Window, ...]] = {}

    def windows(self, principal: Principal) -> tuple[Window, ...]:
        found = self._windows.get(principal)
        if found is None:
            if len(self._windows) > 100_000:
                self._windows.clear()
            found = self._windows[principal] = tuple(
                Window(f"budget:{principal.key_id}", rate) for rate in principal.budget_tokens
            )
        return found

    async def check(self, windows: tuple[Window, ...]) -> None:
        decision = await self._limiter.hit(windows, cost=0)
        if not decision.allowed:
            self._metrics.budget_rejections.inc()
            raise RateLimited(
                f"this key's token budget ({decision.tightest.rate.text}) is spent; "
                "it refills as the window passes",
                code="budget_exceeded",
                retry_after=decision.retry_after_s,
            )

    async def charge(self, windows: tuple[Window, ...], usage: RequestUsage) -> None:
        spent = usage.tokens_in + usage.tokens_out
        if spent:
            await self._limiter.charge(windows, spent)
