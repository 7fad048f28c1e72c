"""Request rate limits: several windows per bucket, checked and counted together.

The algorithm is GCRA (the generic cell rate algorithm, as redis-cell and Stripe use): per
(bucket, rate) one number, the theoretical arrival time. It is exact, O(1) in memory per
window, allows a burst of the full `count`, and yields `remaining` and `reset` for the
``RateLimit`` headers without keeping a log of hits. A request is admitted only when every
window admits it, and only then is it counted in all of them, so a refusal by the hourly
window does not spend the minute's allowance.

`Limiter` is the interface the middleware uses; `LocalLimiter` keeps state in this
process. A Redis implementation with the same arithmetic can replace it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from aiohttp import web

from gateway.config.rates import Rate

__all__ = ["Decision", "Limiter", "LocalLimiter", "Window", "WindowState"]


class Window:
    """One rate applied to one bucket (``key:app-1``, ``key:app-1:query``, ``ip:…``).

    Made once per bucket and kept (the front door caches them), so what every hit needs
    is worked out here: the state's key and the emission interval."""

    __slots__ = ("bucket", "interval", "key", "rate")

    def __init__(self, bucket: str, rate: Rate) -> None:
        self.bucket = bucket
        self.rate = rate
        self.interval = rate.period_s / rate.count
        self.key = f"{bucket}|{rate.count}/{rate.period_s:g}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Window) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Window({self.bucket!r}, {self.rate.text!r})"


class WindowState(NamedTuple):
    rate: Rate
    remaining: int
    reset_s: float
    """Seconds until the window is full again."""


class Decision(NamedTuple):
    allowed: bool
    windows: tuple[WindowState, ...]
    retry_after_s: float = 0.0
    """When refused: seconds until every window would admit one more request."""

    @property
    def tightest(self) -> WindowState:
        """The window closest to refusing: the one the headers report."""
        windows = self.windows
        if len(windows) == 1:
            return windows[0]
        return min(windows, key=lambda w: (w.remaining, -w.reset_s))


class Limiter(Protocol):
    async def hit(self, windows: Sequence[Window], cost: int = 1) -> Decision:
        """Admit and count `cost` requests in every window if every window allows it.

        ``cost=0`` only asks whether one more request would be admitted, counting nothing.
        """

    async def charge(self, windows: Sequence[Window], cost: int) -> None:
        """Count `cost` in every window even past its limit (spent tokens are spent)."""

    async def close(self) -> None: ...


class LocalLimiter:
    """An in-process limiter; exact because check and count happen without an await."""

    __slots__ = ("_clock", "_tat", "_sweeps_at")

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._sweeps_at = 0.0

    def __len__(self) -> int:
        return len(self._tat)

    async def hit(self, windows: Sequence[Window], cost: int = 1) -> Decision:
        return self.hit_now(windows, cost)

    def hit_now(self, windows: Sequence[Window], cost: int = 1) -> Decision:
        now = self._clock()
        if now >= self._sweeps_at:
            self._sweep(now)
        tat = self._tat
        new_tats: list[float] = []
        states: list[WindowState] = []
        retry_after = 0.0
        step = cost or 1
        for window in windows:
            rate = window.rate
            period = rate.period_s
            interval = window.interval
            current = tat.get(window.key, now)
            if current < now:
                current = now
            new_tat = current + interval * step
            allow_at = new_tat - period
            if allow_at > now:
                if allow_at - now > retry_after:
                    retry_after = allow_at - now
                remaining = max(0, int((period - (current - now)) / interval + 1e-9))
                states.append(WindowState(rate, remaining, current - now))
            else:
                remaining = int((period - (new_tat - now)) / interval + 1e-9)
                states.append(WindowState(rate, remaining, new_tat - now))
            new_tats.append(new_tat)
        if retry_after > 0:
            return Decision(False, tuple(states), retry_after)
        if cost:
            for window, new_tat in zip(windows, new_tats, strict=True):
                tat[window.key] = new_tat
        return Decision(True, tuple(states))

    async def charge(self, windows: Sequence[Window], cost: int) -> None:
        self.charge_now(windows, cost)

    def charge_now(self, windows: Sequence[Window], cost: int) -> None:
        now = self._clock()
        tat = self._tat
        for window in windows:
            tat[window.key] = max(tat.get(window.key, now), now) + window.interval * cost

    def _sweep(self, now: float) -> None:
        """Forget windows that are full again: they hold nothing a new entry would not."""
        self._tat = {k: v for k, v in self._tat.items() if v > now}
        self._sweeps_at = now + 60.0

    async def close(self) -> None:
        self._tat.clear()


def reset_seconds(state: WindowState) -> int:
    return max(0, math.ceil(state.reset_s))


limiter_key = web.AppKey("limiter", Limiter)
