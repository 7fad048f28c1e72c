"""A circuit breaker: a pure state machine with an injected clock, no I/O.

closed → open after `failures` consecutive failures → half-open once the open time has
passed, where exactly one probe is admitted: its success closes the breaker, its failure
opens it again for longer (×`BACKOFF_FACTOR`, at most `max_reset_s`), so a provider that
stays down is probed less often while one that recovers gets its traffic back within
`max_reset_s` plus the time to the next request. Each open time is shortened by up to
`JITTER` at random, so replicas that opened together do not probe together; never
lengthened. While open, `acquire()` refuses at once with `CircuitOpen` and the time left.

What counts as a failure is the caller's business (`gateway.resilience.guard`): for an
LLM backend there is one breaker per (backend, model) for what a model does (5xx,
timeouts, resets) and one for the backend as a whole for what its connection does
(refused, DNS, TLS). 4xx, our own rejections and client cancels are `release()`d as
neither success nor failure.

No library was used: pybreaker and aiobreaker wrap calls themselves (and aiobreaker is
unmaintained); a probe-aware state machine the guard drives is shorter than adapting them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from gateway.errors import CircuitOpen

__all__ = ["BACKOFF_FACTOR", "JITTER", "BreakerState", "CircuitBreaker"]

BACKOFF_FACTOR: Final = 1.5
"""A failed probe multiplies the open time by this, up to `max_reset_s`."""
JITTER: Final = 0.1
"""Each open time is shortened at random by up to this fraction."""


class BreakerState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    __slots__ = (
        "_clock", "_consecutive", "_failures", "_last_failure", "_max_reset_s", "_on_change",
        "_open_for", "_opened_at", "_probe_out", "_random", "_reset_s", "_state", "_step",
        "model", "name", "quiet",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        model: str = "",
        failures: int = 5,
        reset_s: float = 10.0,
        max_reset_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        """The model this breaker guards on backend `name`; empty for the whole backend."""
        self._failures = failures
        self._reset_s = reset_s
        self._max_reset_s = max(reset_s, max_reset_s if max_reset_s is not None else reset_s)
        self._clock = clock
        self._random = rand
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._open_for = reset_s
        self._step = reset_s
        """The open time before jitter: `reset_s`, growing with each failed probe."""
        self._probe_out = False
        self._last_failure: str | None = None
        self.quiet = True
        """Closed with no failure counted: a call needs neither `acquire()` nor
        `record_success()` (the hot path reads this one attribute and moves on)."""

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._open_for:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def closed(self) -> bool:
        """True when calls pass without question: the hot path's one check."""
        return self._state is BreakerState.CLOSED

    @property
    def last_failure(self) -> str | None:
        return self._last_failure

    def retry_after(self) -> float:
        """Seconds until the breaker admits a probe (0 when it admits calls now)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._open_for - (self._clock() - self._opened_at))
        if self._state is BreakerState.HALF_OPEN and self._probe_out:
            return 1.0
        return 0.0

    def acquire(self) -> bool:
        """Admit one call or raise `CircuitOpen`. Returns True when the call is the probe."""
        if self._state is BreakerState.CLOSED:
            return False
        state = self.state
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        what = f"model {self.model!r} of backend" if self.model else "backend"
        raise CircuitOpen(
            f"{what} {self.name!r} is failing; not called while its circuit is open",
            backend=self.name,
            retry_after=self.retry_after(),
        )

    def record_success(self, probe: bool) -> None:
        self._consecutive = 0
        if probe:
            self._probe_out = False
        if self._state is not BreakerState.CLOSED and (probe or not self._probe_out):
            self._step = self._reset_s
            self._set(BreakerState.CLOSED)
        self.quiet = self._state is BreakerState.CLOSED

    def record_failure(self, probe: bool, reason: str) -> None:
        self.quiet = False
        self._last_failure = reason
        if probe:
            self._probe_out = False
            self._step = min(self._max_reset_s, self._step * BACKOFF_FACTOR)
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
        self._open_for = self._step * (1.0 - JITTER * self._random())
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        self.quiet = False  # a closed breaker is quiet again after its next success
        if state is BreakerState.CLOSED:
            self._consecutive = 0
        if self._on_change is not None:
            self._on_change(self.name, state)
