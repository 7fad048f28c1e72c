"""Leases of a Redis-kept rate: several requests taken at once, spent in this process.

Asking Redis about every request costs a round trip per request. For windows whose rate
is high enough that one request in a thousand of it is more than one, a replica takes a
lease of up to that many requests (at most 256) in the same atomic check, and admits the
next requests from the lease without asking, for at most `lease_s`.

What it costs in accuracy: never an admission past the limit (a lease is counted in
Redis when it is taken), but a replica may hold up to a lease's worth of requests it
does not use before the lease ends; those are counted as spent, so under a load that
reaches the limit other replicas may be refused up to 0.1 % early. Rates of fewer than
2,000 per window are never leased: every request is decided by Redis, exactly. The
``RateLimit`` headers of leased requests count down from what Redis said at the lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from gateway.resilience.limiter import Decision, Window, WindowState

__all__ = ["Leases", "lease_size"]

LEASE_FRACTION: Final = 1000
"""A lease is at most this fraction (1/1000) of the smallest window's rate."""
MAX_LEASE: Final = 256


def lease_size(windows: Sequence[Window]) -> int:
    """How many requests to take at once for `windows` (1: no lease)."""
    smallest = min(w.rate.count for w in windows)
    return max(1, min(MAX_LEASE, smallest // LEASE_FRACTION))


class _Lease:
    __slots__ = ("expires", "left", "states", "taken_at", "used")

    def __init__(self, left: int, states: tuple[WindowState, ...], now: float, lease_s: float):
        self.left = left
        self.used = 0
        self.states = states
        self.taken_at = now
        self.expires = now + lease_s


class Leases:
    def __init__(self, lease_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease_s = lease_s
        self._clock = clock
        self._leases: dict[tuple[str, ...], _Lease] = {}

    @property
    def on(self) -> bool:
        return self._lease_s > 0

    def keep(self, windows: Sequence[Window], left: int, states: tuple[WindowState, ...]) -> None:
        """Requests taken beyond the one admitted now, for the next ones to spend."""
        now = self._clock()
        key = tuple(w.key for w in windows)
        lease = self._leases.get(key)
        if lease is not None and lease.expires > now and lease.left:
            lease.left += left  # two leases taken at once: keep both
            return
        if len(self._leases) > 100_000:
            self._leases = {k: v for k, v in self._leases.items() if v.expires > now}
        self._leases[key] = _Lease(left, states, now, self._lease_s)

    def spend(self, key: tuple[str, ...], cost: int) -> Decision | None:
        """Admit from the lease of the windows whose keys are `key` (``cost=0`` only
        asks), or None when there is none to use."""
        lease = self._leases.get(key)
        if lease is None or lease.left <= 0:
            return None
        now = self._clock()
        if now >= lease.expires:
            return None
        if cost:
            lease.left -= 1
            lease.used += 1
        elapsed = now - lease.taken_at
        states = tuple(
            WindowState(s.rate, max(0, s.remaining - lease.used), max(0.0, s.reset_s - elapsed))
            for s in lease.states
        )
        return Decision(True, states)

    def __len__(self) -> int:
        return len(self._leases)
