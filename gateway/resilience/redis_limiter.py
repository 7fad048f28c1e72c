"""Limits shared by every replica through Redis, falling back to this process.

The same GCRA arithmetic as `gateway.resilience.limiter.LocalLimiter`, in one Lua script: every
window of a request is checked, and only if all admit it counted, in one atomic round
trip, against Redis's own clock (so replicas with drifting clocks agree). GCRA rather
than a sliding log: one number per window, O(1) memory, and `remaining`/`reset` for the
headers come straight out of it.

When Redis fails, `RedisLimiter` answers from its in-process `LocalLimiter` (limits then
hold per replica) and returns to Redis once it answers again; no request waits on Redis
for longer than its short timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Final

from gateway.config.rates import Rate
from gateway.errors import OutboundLimited
from gateway.ops.metrics import Metrics
from gateway.resilience.limiter import Decision, LocalLimiter, Window, WindowState
from gateway.resilience.resp import Arg, Script
from gateway.resilience.shared_redis import RedisDown, SharedRedis

__all__ = ["RedisLimiter", "SharedOutboundLimiter"]

# KEYS: one per window. ARGV: cost, then (period_ms, count) per window.
# Returns: allowed (1/0), retry_after_ms, then (remaining, reset_ms) per window.
_GCRA: Final = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local cost = tonumber(ARGV[1])
local step_cost = cost
if step_cost == 0 then step_cost = 1 end
local out = {1, 0}
local new_tats = {}
local retry = 0
for i, key in ipairs(KEYS) do
  local period = tonumber(ARGV[2 * i])
  local count = tonumber(ARGV[2 * i + 1])
  local interval = period / count
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * step_cost
  local allow_at = new_tat - period
  if allow_at > now then
    if allow_at - now > retry then retry = allow_at - now end
    local remaining = math.floor((period - (tat - now)) / interval + 1e-9)
    if remaining < 0 then remaining = 0 end
    table.insert(out, remaining)
    table.insert(out, math.ceil(tat - now))
  else
    table.insert(out, math.floor((period - (new_tat - now)) / interval + 1e-9))
    table.insert(out, math.ceil(new_tat - now))
  end
  new_tats[i] = new_tat
end
if retry > 0 then
  out[1] = 0
  out[2] = math.ceil(retry)
  return out
end
if cost > 0 then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, tostring(new_tats[i]), 'PX', math.max(1, math.ceil(new_tats[i] - now)))
  end
end
return out
"""


# KEYS: one per window. ARGV: cost, then (period_ms, count) per window. Counts always.
_CHARGE: Final = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local cost = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i]) / tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  redis.call('SET', key, tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
end
return 1
"""


class RedisLimiter:
    """The `Limiter` interface, cluster-wide through Redis, local while Redis is down."""

    def __init__(self, redis: SharedRedis, metrics: Metrics) -> None:
        self._redis = redis
        self._metrics = metrics
        self._script = Script(_GCRA)
        self._charge = Script(_CHARGE)
        self.fallback = LocalLimiter()

    def _keys_and_args(self, windows: Sequence[Window], cost: int) -> tuple[list[str], list[Arg]]:
        prefix = self._redis.prefix
        keys = [f"{prefix}rl:{w.bucket}:{w.rate.count}/{w.rate.period_s:g}" for w in windows]
        args: list[Arg] = [cost]
        for window in windows:
            args += [int(window.rate.period_s * 1000), window.rate.count]
        return keys, args

    async def charge(self, windows: Sequence[Window], cost: int) -> None:
        keys, args = self._keys_and_args(windows, cost)
        try:
            await self._redis.script(self._charge, keys, args)
        except RedisDown:
            self.fallback.charge_now(windows, cost)

    async def hit(self, windows: Sequence[Window], cost: int = 1) -> Decision:
        if not windows:
            return Decision(True, ())
        keys, args = self._keys_and_args(windows, cost)
        try:
            raw = await self._redis.script(self._script, keys, args)
        except RedisDown:
            self._metrics.limiter_decisions.labels("local").inc()
            return self.fallback.hit_now(windows, cost)
        self._metrics.limiter_decisions.labels("redis").inc()
        states = tuple(
            WindowState(w.rate, int(raw[2 + 2 * i]), int(raw[3 + 2 * i]) / 1000)
            for i, w in enumerate(windows)
        )
        if int(raw[0]) == 1:
            return Decision(True, states)
        return Decision(False, states, int(raw[1]) / 1000)

    async def close(self) -> None:
        await self.fallback.close()


class SharedOutboundLimiter:
    """A provider's quota counted across replicas (through the app's limiter): waits up
    to `max_wait_s` for room, then refuses with 429, so N replicas never spend N× it."""

    def __init__(self, limiter: RedisLimiter, name: str, rate: Rate) -> None:
        self._limiter = limiter
        self._name = name
        self._windows = (Window(f"outbound:{name}", rate),)

    async def acquire(self, max_wait_s: float) -> float:
        started = time.monotonic()
        while True:
            decision = await self._limiter.hit(self._windows)
            waited = time.monotonic() - started
            if decision.allowed:
                return waited
            if waited + decision.retry_after_s > max_wait_s:
                raise OutboundLimited(
                    f"backend {self._name!r} is at its provider quota; try again shortly",
                    backend=self._name,
                    retry_after=decision.retry_after_s,
                )
            await asyncio.sleep(decision.retry_after_s)
