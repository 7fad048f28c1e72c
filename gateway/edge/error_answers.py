"""The one place an exception becomes an HTTP answer, in the one JSON error shape."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.edge.access_log import route_label
from gateway.edge.principal import principal_key
from gateway.edge.request_id import request_id_key
from gateway.errors import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, TollwayError
from gateway.ops.error_tracking import error_tracker_key
from gateway.ops.metrics import metrics_key
from gateway.routing import RouteSpec, route_specs_key

__all__ = ["error_response", "errors_middleware", "route_spec"]

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


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TollwayError as error:
        return _answer(request, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _answer(request, from_http_exception(exc))
    except web.RequestPayloadError:
        return _broken_body(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _log.exception("unhandled error")
        principal = request.get(principal_key)
        request.app[error_tracker_key].capture(
            exc,
            tags={
                "request_id": request.get(request_id_key),
                "route": route_label(request),
                "key_id": principal.key_id if principal is not None else None,
            },
        )
        return _answer(request, TollwayError("internal error; the request id identifies it"))


def _broken_body(request: web.Request) -> web.Response:
    """A body the parser refused while the handler read it (a bad chunk): a 400, counted
    with the parser's refusals, and the connection closed: the rest of it is unreadable."""
    _log.warning("request body refused by the HTTP parser", extra={"route": route_label(request)})
    request.app[metrics_key].http_refusals.labels("invalid_body_framing").inc()
    request.content.feed_eof()  # nothing left to read: aiohttp's lingering read is skipped
    response = _answer(
        request, BadRequest("the request body's framing is invalid", code="invalid_body_framing")
    )
    response.force_close()
    return response


def _answer(request: web.Request, error: TollwayError) -> web.Response:
    spec = route_spec(request)
    tavily = spec is not None and spec.route_class == "search"
    return error_response(error, request.get(request_id_key), tavily_shape=tavily)
