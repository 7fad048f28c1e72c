"""Reading a JSON request body: size-capped, parsed once, an object that matches the
route's published schema (`gateway.edge.body_schema`), or a clear 400."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.edge.body_schema import body_checks_key
from gateway.edge.error_answers import route_spec
from gateway.errors import BadRequest
from gateway.routing import route_spec_key

__all__ = ["read_json"]


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object. `read()` stops at the app's size limit (413)."""
    raw = await request.read()
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    checks = request.app.get(body_checks_key)
    if checks is not None:
        check = checks.for_spec(request.get(route_spec_key) or route_spec(request))
        if check is not None:
            check(body, "")
    return body
