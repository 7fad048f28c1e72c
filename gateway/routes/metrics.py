"""``GET /metrics`` in the Prometheus text format, from the app's own registry."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.appkeys import metrics_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes"]


async def metrics(request: web.Request) -> web.Response:
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
