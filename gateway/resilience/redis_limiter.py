"""Limits shared by every replica through Redis, falling back to this process.

The same GCRA arithmetic as `gateway.resilience.limiter.LocalLimiter`, in one Lua script: every
window of a request is checked, and only if all admit it counted, in one atomic round
trip, against Redis's own clock (so replicas with drifting clocks agree). GCRA rather
than a sliding log: one number per window, O(1) memory, and `remaining`/`reset` for the
headers come straight out of it.

When Redis fails, `RedisLimiter` answers from its in-process `LocalLimiter` (limits then
hold per replica) and returns to Redis once it answers again; no request waits on Redis
for longer than its short timeout.

Windows of very high rates are not asked about per request: a replica takes a lease of
several requests at once and spends it locally (`gateway.resilience.limit_leases`); what
that costs in accuracy is said there.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Final

from gateway.config.rates import Rate
from gateway.errors import OutboundLimited
from gateway.ops.metrics import Metrics
from gateway.resilience.limit_leases import Leases, lease_size
from gateway.resilience.limiter import Decision, LocalLimiter, Window, WindowState
from gateway.resilience.resp import Arg, Script
from gateway.resilience.shared_redis import RedisDown, SharedRedis

__all__ = ["RedisLimiter", "SharedOutboundLimiter"]

# KEYS: one per window. ARGV: cost (0: only ask), the most to take (a lease, >= cost),
# then (period_ms, count) per window.
# Returns: taken (0: refused), retry_after_ms, then (remaining, reset_ms) per window.
# As many as every window admits are taken, up to the lease and at least the cost.
_GCRA: Final = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local cost = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local need = cost
if need == 0 then need = 1 end
if want < need then want = need end
local tats = {}
local free = {}
local take = want
local retry = 0
for i, key in ipairs(KEYS) do
  local period = tonumber(ARGV[1 + 2 * i])
  local interval = period / tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tats[i] = tat
  free[i] = math.floor((period - (tat - now)) / interval + 1e-9)
  if free[i] < take then take = free[i] end
  local allow_at = tat + interval * need - period
  if allow_at - now > retry then retry = allow_at - now end
end
local out = {0, 0}
if take < need then
  out[2] = math.ceil(retry)
  for i = 1, #KEYS do
    table.insert(out, math.max(0, free[i]))
    table.insert(out, math.ceil(tats[i] - now))
  end
  return out
end
if cost == 0 then take = 0 end
out[1] = math.max(take, 1)
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[1 + 2 * i]) / tonumber(ARGV[2 + 2 * i])
  local new_tat = tats[i] + interval * take
  if take > 0 then
    redis.call('SET', key, tostring(new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
  end
  table.insert(out, free[i] - math.max(take, 1))
  table.insert(out, math.ceil(new_tat - now))
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

    def __init__(self, redis: SharedRedis, metrics: Metrics, *, lease_s: float = 1.0) -> None:
        self._redis = redis
        self._metrics = metrics
        self._script = Script(_GCRA)
        self._charge = Script(_CHARGE)
        self.fallback = LocalLimiter()
        self.leases = Leases(lease_s)
        self._queues: dict[tuple[str, ...], deque[tuple[int, asyncio.Future[Decision | None]]]] = {}
        self._decided = {
            where: metrics.limiter_decisions.labels(where) for where in ("redis", "lease", "local")
        }

    def _keys_and_args(
        self, windows: Sequence[Window], head: list[Arg]
    ) -> tuple[list[str], list[Arg]]:
        prefix = self._redis.prefix
        keys = [f"{prefix}rl:{w.bucket}:{w.rate.count}/{w.rate.period_s:g}" for w in windows]
        args = head
        for window in windows:
            args += [int(window.rate.period_s * 1000), window.rate.count]
        return keys, args

    async def charge(self, windows: Sequence[Window], cost: int) -> None:
        keys, args = self._keys_and_args(windows, [cost])
        try:
            await self._redis.script(self._charge, keys, args)
        except RedisDown:
            self.fallback.charge_now(windows, cost)

    async def hit(self, windows: Sequence[Window], cost: int = 1) -> Decision:
        if not windows:
            return Decision(True, ())
        size = lease_size(windows) if self.leases.on else 1
        take = size if cost == 1 else cost
        if size <= 1:
            return await self._ask(windows, cost, take)  # not leased: Redis decides each
        lease_key = tuple(w.key for w in windows)
        leased = self.leases.spend(lease_key, cost)
        if leased is not None:
            self._decided["lease"].inc()
            return leased
        queue = self._queues.get(lease_key)
        if queue is not None:  # a lease is being taken: wait for a share of it
            turn: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
            queue.append((cost, turn))
            decided = await turn
            if decided is not None:
                return decided
        else:
            queue = self._queues[lease_key] = deque()
        decision: Decision | None = None
        try:
            decision = await self._ask(windows, max(cost, 1) if cost else 0, max(take, 1))
            return decision
        finally:
            self._serve_queue(lease_key, queue, decision)

    def _serve_queue(
        self,
        lease_key: tuple[str, ...],
        queue: deque[tuple[int, asyncio.Future[Decision | None]]],
        decision: Decision | None,
    ) -> None:
        """Hand the new lease to those who waited for it, in order; a refusal to them all;
        then the next one still waiting takes the next lease."""
        while queue:
            cost, turn = queue[0]
            if turn.done():  # its caller went away
                queue.popleft()
                continue
            if decision is not None and not decision.allowed and cost:
                queue.popleft()
                turn.set_result(decision)
                continue
            leased = self.leases.spend(lease_key, cost)
            if leased is None:
                break
            queue.popleft()
            self._decided["lease"].inc()
            turn.set_result(leased)
        if not queue:
            del self._queues[lease_key]
            return
        queue.popleft()[1].set_result(None)  # your turn to take a lease

    async def _ask(self, windows: Sequence[Window], cost: int, take: int) -> Decision:
        keys, args = self._keys_and_args(windows, [cost, take])
        try:
            raw = await self._redis.script(self._script, keys, args)
        except RedisDown:
            self._decided["local"].inc()
            return self.fallback.hit_now(windows, cost)
        self._decided["redis"].inc()
        states = tuple(
            WindowState(w.rate, int(raw[2 + 2 * i]), int(raw[3 + 2 * i]) / 1000)
            for i, w in enumerate(windows)
        )
        taken = int(raw[0])
        if taken == 0:
            return Decision(False, states, int(raw[1]) / 1000)
        if cost == 1 and taken > 1:
            # The headers count the lease's unused requests as still there.
            states = tuple(WindowState(s.rate, s.remaining + taken - 1, s.reset_s) for s in states)
            self.leases.keep(windows, taken - 1, states)
        return Decision(True, states)

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
