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

from gateway.errors import PayloadTooLarge
from gateway.routing import RouteSpec

__all__ = ["BodyLimits"]


class BodyLimits:
    """`named` maps a limit's name (`RouteSpec.body_limit`) to its bytes and config key."""

    __slots__ = ("_default", "_message", "_named")

    def __init__(self, max_bytes: int, named: Mapping[str, tuple[int, str]]) -> None:
        self._default = max_bytes
        self._named = named
        self._message = f"request body is larger than {max_bytes} bytes"

    def check(self, request: web.Request, spec: RouteSpec | None) -> None:
        length = request.content_length
        if length is None:
            return
        if spec is not None and spec.body_limit is not None:
            limit, key = self._named[spec.body_limit]
            if length > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes ({key})")
        elif length > self._default:
            raise PayloadTooLarge(self._message)
