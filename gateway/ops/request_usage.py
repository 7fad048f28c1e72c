"""Who one request is and what it used, filled in by whoever knows it (front door, route,
backend, cache).

Created by the front door for every request and set as the request's one context
variable, so a handler can set the backend, model or dataset, tokens and rows without
knowing who reads them (the access log, metrics, the usage store), and a log line deep in
a backend carries the request id, key id and tenant without being handed them.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from aiohttp import web

__all__ = ["RequestUsage", "current_usage"]


@dataclass(slots=True)
class RequestUsage:
    request_id: str | None = None
    key_id: str | None = None
    """The caller's key id and tenant, once auth knows them."""
    tenant: str | None = None
    backend: str | None = None
    model: str | None = None
    """The model that served the request, or the dataset read."""
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    """Of `tokens_in`, those the provider served from its prompt cache."""
    tokens_reasoning: int = 0
    """Of `tokens_out`, those spent reasoning."""
    audio_seconds: float = 0.0
    """Audio transcribed or translated, when the provider says how long it was."""
    audio_bytes: int = 0
    """Audio uploaded (when no seconds are reported) or spoken back, in bytes."""
    images: int = 0
    image_size: str | None = None
    rows: int = 0
    cache_hit: bool = False
    upstream_s: float = 0.0
    """Time spent waiting on the backend, for Server-Timing and the slow-request log."""
    outcome: str | None = None
    """How a stream ended for its client: ``completed``, ``upstream_failed`` (an in-band
    error), ``client_gone`` or ``shutdown``; None for plain answers."""
    status: int | None = None
    """The status to record when it differs from the response's: what a stream's client
    saw (200 completed, 499 gone, 502 upstream failed, 503 shutdown)."""


current_usage: contextvars.ContextVar[RequestUsage | None] = contextvars.ContextVar(
    "tollway_usage", default=None
)
"""The record of the request being served, for code that is not handed it: log lines
read its ids, the guard adds the time spent waiting on backends."""

usage_key = web.RequestKey("usage", RequestUsage)
