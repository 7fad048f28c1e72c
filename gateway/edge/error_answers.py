"""The one place an exception becomes an HTTP answer, in the one JSON error shape."""

from __future__ import annotations

import logging
from typing import Final

import orjson
from aiohttp import web

from gateway.errors import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, TollwayError
from gateway.ops.error_tracking import ErrorTracker
from gateway.ops.metrics import Metrics
from gateway.routing import RouteSpec, route_specs_key

__all__ = ["broken_body", "error_response", "from_http_exception", "route_spec", "unexpected"]

_log = logging.getLogger("tollway.errors")

_HTTP_TO_ERROR: Final[dict[int, type[TollwayError]]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def route_spec(request: web.Request) -> RouteSpec | None:
    """What the matched route needs (class, scope), or None for unmatched and system routes."""
    return request.app[route_specs_key].get(request.match_info.route)


def error_body(error: TollwayError, request_id: str | None) -> dict[str, object]:
    return {
        "error": {
            "message": error.message,
            "type": error.type_name,
            "code": error.code,
            "param": error.param,
            "request_id": request_id,
        }
    }


def error_response(
    error: TollwayError, request_id: str | None, *, tavily_shape: bool = False
) -> web.Response:
    """The answer for `error`: its status, the JSON shape and its headers.

    Tavily's SDKs read the message from ``detail.error``; search routes carry both.
    """
    body = error_body(error, request_id)
    if tavily_shape:
        body["detail"] = {"error": error.message}
    return web.Response(
        status=error.http_status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=error.response_headers(),
    )


def from_http_exception(exc: web.HTTPException) -> TollwayError:
    kind = _HTTP_TO_ERROR.get(exc.status, BadRequest)
    if exc.status == 404:
        return NotFound("no such route")
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return MethodNotAllowed(f"method not allowed; allowed: {allow}", headers={"Allow": allow})
    if exc.status == 413:
        return PayloadTooLarge("request body is too large")
    return kind(exc.reason or "bad request")


def unexpected(
    exc: Exception, tracker: ErrorTracker, *, request_id: str | None, route: str, key_id: str | None
) -> TollwayError:
    """A bug: logged with its traceback, sent to error tracking, answered as a plain 500
    that names no detail but the request id."""
    _log.exception("unhandled error")
    tracker.capture(exc, tags={"request_id": request_id, "route": route, "key_id": key_id})
    return TollwayError("internal error; the request id identifies it")


def broken_body(request: web.Request, metrics: Metrics, route: str) -> TollwayError:
    """A body the parser refused while the handler read it (a bad chunk): a 400, counted
    with the parser's refusals; the caller closes the connection (the rest is unreadable)."""
    _log.warning("request body refused by the HTTP parser", extra={"route": route})
    metrics.http_refusals.labels("invalid_body_framing").inc()
    request.content.feed_eof()  # nothing left to read: aiohttp's lingering read is skipped
    return BadRequest("the request body's framing is invalid", code="invalid_body_framing")
