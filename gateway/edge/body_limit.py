"""Refuse a body over the limit with 413 before reading it.

A declared ``Content-Length`` over the limit is refused at once. A chunked body has no
length; the app's ``client_max_size`` (set to the same limit) makes `request.read()`
stop and raise once the count passes it, so it is never buffered whole. A route with a
limit of its own (`RouteSpec.body_limit`, e.g. audio uploads) is held to that one
instead, and counts its body itself as it streams it.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import PayloadTooLarge
from gateway.routing import route_specs_key

__all__ = ["body_limit_middleware"]


def body_limit_middleware(max_bytes: int, named: Mapping[str, tuple[int, str]]) -> Middleware:
    """`named` maps a limit's name to its bytes and its config key."""
    message = f"request body is larger than {max_bytes} bytes"

    @web.middleware
    async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        limit = max_bytes
        spec = request.app[route_specs_key].get(request.match_info.route) if named else None
        if spec is not None and spec.body_limit is not None:
            limit, key = named[spec.body_limit]
            if length is not None and length > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes ({key})")
            return await handler(request)
        if length is not None and length > limit:
            raise PayloadTooLarge(message)
        return await handler(request)

    return body_limit
