"""``GET /openapi.json``: the API as it is routed, generated from the same route list."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from gateway import __version__
from gateway.routing import RouteDef, RouteSpec

__all__ = ["openapi_document", "routes"]

_ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
                "request_id": {"type": ["string", "null"]},
            },
        }
    },
}
_PATH_PARAM: Final = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def _operation(route: RouteDef) -> dict[str, Any]:
    spec = route.spec
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    responses.update(spec.responses)
    if spec.scope is not None:
        responses["401"] = {"description": "Missing or invalid API key", **error}
        responses["403"] = {"description": f"The key lacks the {spec.scope!r} scope", **error}
    if spec.limited:
        responses["429"] = {"description": "Rate limited; see Retry-After", **error}
    if route.method in ("POST", "PUT", "PATCH"):
        responses["400"] = {"description": "Malformed request", **error}
        responses["413"] = {"description": "Body too large", **error}
    operation: dict[str, Any] = {
        "summary": spec.summary or route.path,
        "tags": [spec.route_class],
        "responses": responses,
        "security": [{"bearer": []}, {"apiKey": []}] if spec.scope is not None else [],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    if parameters:
        operation["parameters"] = parameters
    if spec.request_body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": spec.request_body}},
        }
    elif spec.request_content is not None:
        operation["requestBody"] = {"required": True, "content": dict(spec.request_content)}
    return operation


def openapi_document(route_defs: Sequence[RouteDef]) -> dict[str, Any]:
    """An OpenAPI 3.1 document with one operation per routed path and method."""
    paths: dict[str, dict[str, Any]] = {}
    for route in route_defs:
        path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tollway", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def routes(all_routes: Sequence[RouteDef]) -> list[RouteDef]:
    """The /openapi.json route, describing `all_routes` and itself."""

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    own = RouteDef("GET", "/openapi.json", openapi, RouteSpec("docs", None, False, "This document"))
    body = orjson.dumps(openapi_document([*all_routes, own]))
    return [own]
