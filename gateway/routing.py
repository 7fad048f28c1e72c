"""Routes as data: path, method, handler and what the middlewares must know about them.

Each routes module exposes `routes() -> list[RouteDef]`. The app adds them to the router
and keeps `route → RouteSpec`, so a middleware learns a route's class and required scope
with one dict lookup, and `/openapi.json` is generated from the same list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp.typedefs import Handler

__all__ = ["RouteDef", "RouteSpec"]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    route_class: str
    """Limits, cache and metrics group routes by this: chat, embeddings, query, odata, …"""
    scope: str | None
    """The key scope required; None means the route is public (probes, metrics)."""
    limited: bool = True
    summary: str = ""
    request_body: Mapping[str, Any] | None = None
    """JSON schema of the request body, for /openapi.json."""
    responses: Mapping[str, Any] = field(default_factory=dict)
    """Extra OpenAPI responses by status; the error shape is documented for every route."""


@dataclass(frozen=True, slots=True)
class RouteDef:
    method: str
    path: str
    handler: Handler
    spec: RouteSpec
