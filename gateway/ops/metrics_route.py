"""``GET /metrics`` in the Prometheus text format, from the app's own registry."""

from __future__ import annotations

import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.ops.metrics import metrics_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes"]


async def metrics(request: web.Request) -> web.Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: add up what every worker wrote to the shared directory.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(request.app[metrics_key].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def routes() -> list[RouteDef]:
    return [
        RouteDef(
            "GET", "/metrics", metrics, RouteSpec("metrics", None, False, "Prometheus metrics")
        )
    ]
