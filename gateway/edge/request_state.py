"""What the front door knows of a request in flight, kept on it under one key.

The headers every answer carries are written from it (`gateway.edge.headers`): reading
one object is cheaper than asking the request for several keys, some of them absent.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.ops.request_usage import RequestUsage
from gateway.resilience.limiter import Decision

__all__ = ["RequestState", "request_state_key"]


@dataclass(slots=True)
class RequestState:
    started: float
    """`time.perf_counter()` when the request reached the front door."""
    usage: RequestUsage
    client_ip: str
    limits: Decision | None = None
    """The limiter's decision for this request, written out as the RateLimit headers."""


request_state_key = web.RequestKey("request_state", RequestState)
