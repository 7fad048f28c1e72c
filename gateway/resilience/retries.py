"""Which failures a retry of the same backend can help, and how long to wait first.

Retried: a connection that could not be made or was reset, and an upstream's 408, 409,
429 and every 5xx (500 included). Never: other 4xx (the same request is refused again),
timeouts (the caller fails over instead of waiting twice), our own refusals (breaker,
bulkhead, quota).

The wait grows exponentially from `BACKOFF_BASE_S` with jitter over the whole
[½, 1½] × ceiling band, so attempts spread out yet never land closer than a quarter
second; an upstream's ``Retry-After`` is a floor. Every failure has a short reason, the
label its metrics and logs carry (a bounded set).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BackendUnreachable,
    CircuitOpen,
    OutboundLimited,
    UpstreamHTTPError,
)

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "RETRYABLE_REASONS",
    "backoff_delay",
    "failure_reason",
]

BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 8.0
RETRYABLE_REASONS: Final = frozenset({"connect", "reset", "408", "409", "429", "5xx"})


def failure_reason(error: BackendError) -> str:
    """The failure's kind: connect, reset, timeout, 408, 409, 429, 5xx, 4xx, breaker_open,
    overloaded, quota, or the error's own code for anything else."""
    if isinstance(error, UpstreamHTTPError):
        status = error.upstream_status
        if status >= 500:
            return "5xx"
        if status in (408, 409, 429):
            return str(status)
        return "4xx"
    if isinstance(error, CircuitOpen):
        return "breaker_open"
    if isinstance(error, BackendOverloaded):
        return "overloaded"
    if isinstance(error, BackendUnreachable):
        return "connect"
    if isinstance(error, BackendUnavailable):
        return "reset"
    if isinstance(error, BackendTimeout):
        return "timeout"
    if isinstance(error, OutboundLimited):
        return "quota"
    return error.code


def backoff_delay(
    attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random
) -> float:
    """The wait before retry number `attempt` + 1: 0.25–0.75 s, then 0.5–1.5 s, and so
    on up to a ceiling of `BACKOFF_CAP_S`; never less than the upstream's Retry-After."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**attempt)
    delay = ceiling * (0.5 + rand())
    if retry_after is not None and retry_after > delay:
        return float(retry_after)
    return delay
