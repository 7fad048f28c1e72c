"""Routes as data: path, method, handler and what the middlewares must know about them.

Each routes module exposes `routes() -> list[RouteDef]`. The app adds them to the router
and keeps `route → RouteSpec`, so a middleware learns a route's class and required scope
with one dict lookup, and `/openapi.json` is generated from the same list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import AbstractRoute

__all__ = ["RouteDef", "RouteSpec", "route_spec_key", "route_specs_key"]


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
    body_limit: str | None = None
    """The named size limit the body answers to instead of ``server.max_body_bytes``
    (``audio``: ``server.audio_max_bytes``); such a route counts its body as it reads it."""
    request_content: Mapping[str, Any] | None = None
    """For a body that is not JSON: OpenAPI content by media type (a multipart upload)."""


@dataclass(frozen=True, slots=True)
class RouteDef:
    method: str
    path: str
    handler: Handler
    spec: RouteSpec


route_specs_key: web.AppKey[dict[AbstractRoute, RouteSpec]] = web.AppKey("route_specs")
"""Every added route's spec, so a check learns a route's class and scope in one lookup."""
route_spec_key = web.RequestKey("route_spec", RouteSpec)
"""The matched route's spec, once auth has looked it up."""
