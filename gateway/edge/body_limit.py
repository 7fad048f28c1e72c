"""Refuse a body over the limit with 413 before reading it.

A declared ``Content-Length`` over the limit is refused at once. A chunked body has no
length; the app's ``client_max_size`` (set to the same limit) makes `request.read()`
stop and raise once the count passes it, so it is never buffered whole.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import PayloadTooLarge

__all__ = ["body_limit_middleware"]


def body_limit_middleware(max_bytes: int) -> Middleware:
    message = f"request body is larger than {max_bytes} bytes"

    @web.middleware
    async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > max_bytes:
            raise PayloadTooLarge(message)
        return await handler(request)

    return body_limit
