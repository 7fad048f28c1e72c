"""What is written down once per request, with its final status: the request metrics,
the JSON access line, the usage record (for a caller with a key) and, when it was slow,
a warning.

Metric children are looked up once per (route, method, status) and kept: prometheus
client's `labels()` takes a lock and builds its key on every call. The wall clock is
read once per request, and the usage record's day is computed once per day.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from gateway.ops.logs import AccessLines
from gateway.ops.metrics import Metrics
from gateway.ops.request_usage import RequestUsage
from gateway.state.writer import BatchWriter

__all__ = ["AccessLog", "route_label"]

_log = logging.getLogger("tollway.access")


def route_label(request: web.Request) -> str:
    """The route template (bounded cardinality), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class RouteMeter:
    """One route's request counter and latency histogram children, by method and status."""

    __slots__ = ("_durations", "_metrics", "_requests", "route")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self._metrics = metrics
        self.route = route
        self._requests: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    def observe(self, method: str, status: int, elapsed: float) -> None:
        counter = self._requests.get((method, status))
        if counter is None:
            counter = self._requests[(method, status)] = self._metrics.requests.labels(
                self.route, method, str(status)
            )
        counter.inc()
        duration = self._durations.get(method)
        if duration is None:
            duration = self._durations[method] = self._metrics.request_duration.labels(
                self.route, method
            )
        duration.observe(elapsed)


class AccessLog:
    """Writes a request down; its line writer and usage store are bound at start."""

    def __init__(self, metrics: Metrics, *, slow_request_s: float) -> None:
        self._lines: AccessLines | None = None
        self._usage: BatchWriter | None = None
        self._slow_request_s = slow_request_s
        self.in_flight = metrics.in_flight
        self._day_ends = 0.0
        self._day = ""

    def start(self, lines: AccessLines, usage: BatchWriter | None) -> None:
        self._lines = lines
        self._usage = usage

    def flush(self) -> None:
        if self._lines is not None:
            self._lines.flush()

    def record(
        self,
        method: str,
        client_ip: str,
        meter: RouteMeter,
        route_class: str | None,
        usage: RequestUsage,
        status: int,
        elapsed: float,
        response: web.StreamResponse | None,
    ) -> None:
        meter.observe(method, status, elapsed)
        bytes_out = _bytes_out(response)
        latency_ms = round(elapsed * 1000, 3)
        if self._lines is not None:
            self._lines.write(
                {
                    "request_id": usage.request_id, "key_id": usage.key_id,
                    "tenant": usage.tenant, "method": method, "route": meter.route,
                    "status": status, "backend": usage.backend, "model": usage.model,
                    "tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out,
                    "latency_ms": latency_ms, "bytes_out": bytes_out,
                    "client_ip": client_ip,
                }
            )  # fmt: skip
        if usage.key_id is not None and self._usage is not None:
            self._usage.add(
                self._row(meter.route, route_class, usage, status, latency_ms, response)
            )
        if elapsed >= self._slow_request_s:
            _log.warning(
                "slow request",
                extra={
                    "request_id": usage.request_id,
                    "route": meter.route,
                    "status": status,
                    "backend": usage.backend,
                    "latency_ms": latency_ms,
                    "upstream_ms": round(usage.upstream_s * 1000, 3),
                },
            )

    def _row(
        self,
        route: str,
        route_class: str | None,
        usage: RequestUsage,
        status: int,
        latency_ms: float,
        response: web.StreamResponse | None,
    ) -> tuple[Any, ...]:
        now = time.time()
        if now >= self._day_ends:
            day_start = now - now % 86400
            self._day, self._day_ends = (
                time.strftime("%Y-%m-%d", time.gmtime(now)),
                day_start + 86400,
            )
        cache_hit = response is not None and response.headers.get("X-Cache") == "HIT"
        return (
            now, self._day, usage.request_id, usage.key_id, usage.tenant, route_class, route,
            usage.backend, usage.model, status, latency_ms, usage.tokens_in, usage.tokens_out,
            usage.rows, _bytes_out(response), 1 if cache_hit else 0, usage.tokens_cached,
            usage.tokens_reasoning, usage.audio_seconds, usage.audio_bytes, usage.images,
            usage.image_size, usage.outcome,
        )  # fmt: skip


def _bytes_out(response: web.StreamResponse | None) -> int:
    if response is None:
        return 0
    # A plain Response is written after the front door returns: its length is declared.
    return response.body_length or response.content_length or 0
