"""Accept a sane ``X-Request-ID`` or make one; tag the request and every log line with it."""

from __future__ import annotations

import os
import re
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.ops.logs import log_context

__all__ = ["new_request_id", "request_id_key", "request_id_middleware", "started_key"]

request_id_key = web.RequestKey("request_id", str)

_SANE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return os.urandom(16).hex()


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get("X-Request-ID")
    request_id = offered if offered and _SANE.match(offered) else new_request_id()
    request[request_id_key] = request_id
    token = log_context.set({"request_id": request_id})
    try:
        return await handler(request)
    finally:
        log_context.reset(token)


started_key = web.RequestKey("started", float)
"""`time.perf_counter()` when the request reached the first middleware."""
