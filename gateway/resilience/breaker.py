"""A circuit breaker: a pure state machine with an injected clock, no I/O.

closed → open after `failures` consecutive failures → half-open once `reset_s` has passed,
where exactly one probe is admitted: its success closes the breaker, its failure opens it
again. While open, `acquire()` refuses at once with `CircuitOpen` and the time left.

What counts as a failure is the caller's business (`BackendError.breaker_failure`):
connect errors, timeouts, 5xx and resets do; 4xx, our own rejections and client cancels
are `release()`d as neither success nor failure.

No library was used: pybreaker and aiobreaker wrap calls themselves (and aiobreaker is
unmaintained); a probe-aware state machine the guard drives is shorter than adapting them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from gateway.errors import CircuitOpen

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    __slots__ = (
        "_clock", "_consecutive", "_failures", "_last_failure", "_on_change", "_opened_at",
        "_probe_out", "_reset_s", "_state", "name",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        reset_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self._failures = failures
        self._reset_s = reset_s
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_out = False
        self._last_failure: str | None = None

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._reset_s:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def last_failure(self) -> str | None:
        return self._last_failure

    def retry_after(self) -> float:
        """Seconds until the breaker admits a probe (0 when it admits calls now)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._reset_s - (self._clock() - self._opened_at))
        if self._state is BreakerState.HALF_OPEN and self._probe_out:
            return 1.0
        return 0.0

    def acquire(self) -> bool:
        """Admit one call or raise `CircuitOpen`. Returns True when the call is the probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        raise CircuitOpen(
            f"backend {self.name!r} is failing; not called while its circuit is open",
            backend=self.name,
            retry_after=self.retry_after(),
        )

    def record_success(self, probe: bool) -> None:
        self._consecutive = 0
        if probe:
            self._probe_out = False
        if self._state is not BreakerState.CLOSED and (probe or not self._probe_out):
            self._set(BreakerState.CLOSED)

    def record_failure(self, probe: bool, reason: str) -> None:
        self._last_failure = reason
        if probe:
            self._probe_out = False
            self._open()
            return
        self._consecutive += 1
        if self._state is BreakerState.CLOSED and self._consecutive >= self._failures:
            self._open()

    def release(self, probe: bool) -> None:
        """The call ended as neither success nor failure (4xx, cancel, our own refusal)."""
        if probe:
            self._probe_out = False

    def describe(self) -> dict[str, object]:
        return {
            "breaker": self.state.name.lower(),
            "consecutive_failures": self._consecutive,
            "last_failure": self._last_failure,
            "retry_after_s": round(self.retry_after(), 1),
        }

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is BreakerState.CLOSED:
            self._consecutive = 0
        if self._on_change is not None:
            self._on_change(self.name, state)
