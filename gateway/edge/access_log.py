"""One access log line and the request metrics per request, with the final status."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.edge.client_ip import request_ip
from gateway.edge.principal import principal_key
from gateway.edge.request_id import request_id_key, started_key
from gateway.ops.logs import log_context, write_access_line
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import RequestUsage, current_usage, usage_key
from gateway.routing import route_spec_key
from gateway.state.service import state_service_key

__all__ = ["access_log_middleware", "route_label"]

_log = logging.getLogger("tollway.access")


def route_label(request: web.Request) -> str:
    """The route template (bounded cardinality), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def access_log_middleware(slow_request_s: float) -> Middleware:
    @web.middleware
    async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _served(request, handler, slow_request_s)

    return access_log


async def _served(
    request: web.Request, handler: Handler, slow_request_s: float
) -> web.StreamResponse:
    metrics = request.app[metrics_key]
    started = request[started_key] = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    usage = request[usage_key] = RequestUsage()
    current_usage.set(usage)
    metrics.in_flight.inc()
    try:
        response = await handler(request)
        status = usage.status or response.status
        return response
    except asyncio.CancelledError:
        # The client went away (499, nginx's name for it), unless a stream had already
        # ended for it and said how.
        status = usage.status or 499
        raise
    finally:
        metrics.in_flight.dec()
        elapsed = time.perf_counter() - started
        route = route_label(request)
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.request_duration.labels(route, request.method).observe(elapsed)
        context = log_context.get() or {}
        principal = request.get(principal_key)
        write_access_line(
            {
                "request_id": context.get("request_id"),
                "key_id": principal.key_id if principal else None,
                "tenant": principal.tenant if principal else None,
                "method": request.method,
                "route": route,
                "status": status,
                "backend": usage.backend,
                "model": usage.model,
                "tokens_in": usage.tokens_in,
                "tokens_out": usage.tokens_out,
                "latency_ms": round(elapsed * 1000, 3),
                "bytes_out": _bytes_out(response),
                "client_ip": request_ip(request),
            }
        )
        if principal is not None:
            _record_usage(
                request, principal.key_id, principal.tenant, route, status, elapsed, response
            )
        if elapsed >= slow_request_s:
            _log.warning(
                "slow request",
                extra={
                    "request_id": context.get("request_id"),
                    "route": route,
                    "status": status,
                    "backend": usage.backend,
                    "latency_ms": round(elapsed * 1000, 3),
                    "upstream_ms": round(usage.upstream_s * 1000, 3),
                },
            )


def _bytes_out(response: web.StreamResponse | None) -> int:
    if response is None:
        return 0
    # A plain Response is written after the middlewares return: its length is declared.
    return response.body_length or response.content_length or 0


def _record_usage(
    request: web.Request,
    key_id: str,
    tenant: str,
    route: str,
    status: int,
    elapsed: float,
    response: web.StreamResponse | None,
) -> None:
    service = request.app.get(state_service_key)
    if service is None:
        return
    usage = request[usage_key]
    spec = request.get(route_spec_key)
    now = time.time()
    cache_hit = response is not None and response.headers.get("X-Cache") == "HIT"
    service.usage.add(
        (
            now,
            time.strftime("%Y-%m-%d", time.gmtime(now)),
            request.get(request_id_key),
            key_id,
            tenant,
            spec.route_class if spec is not None else None,
            route,
            usage.backend,
            usage.model,
            status,
            round(elapsed * 1000, 3),
            usage.tokens_in,
            usage.tokens_out,
            usage.rows,
            _bytes_out(response),
            1 if cache_hit else 0,
            usage.tokens_cached,
            usage.tokens_reasoning,
            usage.audio_seconds,
            usage.audio_bytes,
            usage.images,
            usage.image_size,
            usage.outcome,
        )
    )
