"""Requests the HTTP parser refuses, answered like every other error.

aiohttp answers a request it cannot parse (a NUL in a header, a bad ``Content-Length``,
an oversized line, too many headers, a bad chunk size, ``HTTP/9.9``, TLS bytes on the
plain port) from its protocol, before any middleware runs: plain text that quotes the
offending bytes, and an ERROR log line with a traceback. `RefusingRequestHandler`
replaces that answer: the one JSON error shape with a fresh request id (the headers
could not be read, so none is taken from them), a status that says what was wrong
(400; 414 for a long request line; 431 for long or too many headers; 505 for an unknown
HTTP version), a fixed
message that never quotes the request, and ``Connection: close``. Each refusal is
counted in ``tollway_http_refusals_total{reason}`` and logged as one WARNING line without
a traceback, at most `log_per_minute` lines per client address, so a flood of junk
neither fills the log nor pages anyone.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo
from aiohttp.web_request import BaseRequest
from prometheus_client import Counter

from gateway.config.rates import Rate
from gateway.edge.request_id import new_request_id
from gateway.resilience.limiter import LocalLimiter, Window

__all__ = ["ParserRefusals", "RefusingRequestHandler", "refusal_for"]

_log = logging.getLogger("tollway.serve")

# (status, code, message) per kind of refusal; the message never quotes the request.
_MALFORMED: Final = (400, "malformed_request", "the request is not valid HTTP/1.1")
_TOO_LARGE: Final = (
    431,
    "request_header_too_large",
    "the request line or a header is too long, or there are too many headers",
)
_URI_TOO_LONG: Final = (414, "uri_too_long", "the request line is too long")
_VERSION: Final = (505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served")
_TLS: Final = (400, "tls_on_plain_port", "this port speaks plain HTTP; TLS is not served here")
_METHOD: Final = (400, "invalid_method", "the request method is not a valid token")
_HEADER: Final = (400, "invalid_header", "a header name or value holds a forbidden character")
_LENGTH: Final = (400, "invalid_content_length", "the Content-Length header is invalid")
_FRAMING: Final = (400, "invalid_body_framing", "the request body's framing is invalid")


def refusal_for(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """What to answer for a request aiohttp refused with `status` because of `exc`."""
    if status == 504:
        return 504, "handler_timeout", "the request took too long"
    if status >= 500 and not isinstance(exc, http_exceptions.HttpProcessingError):
        return 500, "internal_error", "internal error; the request id identifies it"
    text = str(getattr(exc, "message", "") or "")
    if isinstance(exc, http_exceptions.LineTooLong):
        # aiohttp's parser collects the request target in a bytearray, header names and
        # values in bytes: that is how the two cases tell apart.
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytearray) or bytes(line[:1]) == b"/":
            return _URI_TOO_LONG
        return _TOO_LARGE
    if "Too many headers" in text:
        return _TOO_LARGE
    if "HTTPS traffic" in text:
        return _TLS
    if "HTTP version" in text:
        return _VERSION
    if isinstance(exc, http_exceptions.BadHttpMethod) or "method" in text.lower():
        return _METHOD
    if "Content-Length" in text:
        return _LENGTH
    if isinstance(exc, http_exceptions.TransferEncodingError) or "chunk" in text.lower():
        return _FRAMING
    if isinstance(exc, http_exceptions.InvalidHeader) or "header" in text.lower():
        return _HEADER
    return _MALFORMED


class ParserRefusals:
    """Counts refusals and logs them, rate-limited per client address."""

    __slots__ = ("_counter", "_limiter", "_rate")

    def __init__(self, counter: Counter | None, *, log_per_minute: int = 10) -> None:
        self._counter = counter
        self._limiter = LocalLimiter()
        self._rate = Rate(log_per_minute, 60.0, f"{log_per_minute}/minute")

    def note(self, client_ip: str | None, status: int, code: str, request_id: str) -> None:
        if self._counter is not None:
            self._counter.labels(code).inc()
        window = (Window(f"refused:{client_ip}", self._rate),)
        if self._limiter.hit_now(window).allowed:
            _log.warning(
                "request refused by the HTTP parser",
                extra={
                    "client_ip": client_ip,
                    "status": status,
                    "code": code,
                    "request_id": request_id,
                },
            )


class RefusingRequestHandler(RequestHandler):
    """aiohttp's connection protocol, with its error answers in Tollway's shape."""

    __slots__ = ("_refusals",)

    def __init__(self, manager: web.Server, *, refusals: ParserRefusals, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._refusals = refusals

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A bad chunk size in a packet after the headers: aiohttp's C parser queues the
        # refusal behind the request whose body is being read, and that read waits for the
        # client to give up. Hand the error to the read instead (errors middleware: 400).
        request = self._current_request
        if request is not None and self._messages and isinstance(self._messages[-1][0], _ErrInfo):
            content = request.content
            if not content.is_eof() and content.exception() is None:
                content.set_exception(RequestPayloadError("the request body's framing is invalid"))

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer was under way: only a close is left
            raise ConnectionError("cannot answer after part of a response was sent")
        status, code, text = refusal_for(status, exc)
        request_id = new_request_id()
        self._refusals.note(request.remote, status, code, request_id)
        body = {
            "error": {
                "message": text,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "code": code,
                "param": None,
                "request_id": request_id,
            }
        }
        response = web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={
                "X-Request-ID": request_id,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
                "Connection": "close",
            },
        )
        response.force_close()
        return response
