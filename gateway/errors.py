"""Every error Tollway answers with, as typed exceptions.

One middleware (`gateway.edge.error_answers`) turns these into the one JSON shape,
OpenAI's: ``{"error": {"message", "type", "code", "param", "request_id"}}``. Handlers
and backends raise; nobody else builds an error response.

Hierarchy::

    TollwayError                      500 server_error
    ├── BadRequest                    400 invalid_request_error
    ├── Unauthorized                  401 authentication_error
    ├── Forbidden                     403 permission_error
    ├── NotFound                      404 not_found_error
    ├── MethodNotAllowed              405 invalid_request_error
    ├── PayloadTooLarge               413 invalid_request_error
    ├── RateLimited                   429 rate_limit_error       (Retry-After)
    ├── NotSupported                  501 not_implemented_error
    ├── NotConfigured                 503 service_unavailable_error (nothing here serves it)
    └── BackendError                  raised by backends and the resilience wrapper
        ├── UpstreamHTTPError         the upstream's own status, type, code and param
        ├── BackendUnavailable        503 service_unavailable_error (reset, broken answer)
        │   ├── BackendUnreachable    503, refused, DNS, TLS or connect timeout: the whole backend
        │   ├── CircuitOpen           503, the breaker is open; the backend was not called
        │   ├── BackendOverloaded     503, the bulkhead is full; the backend was not called
        │   └── BackendCrashed        502, the backend's process died with the call in flight
        │       └── BackendOutOfMemory  502, the query needed more memory than the backend may use
        ├── OutboundLimited           429, the provider's quota would be exceeded
        ├── ResponseTooLarge          502, the answer would exceed max_response_bytes
        └── BackendTimeout            504 timeout_error

A backend module may import this module and nothing else of `gateway`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "BackendError",
    "BackendCrashed",
    "BackendOutOfMemory",
    "BackendOverloaded",
    "BackendTimeout",
    "BackendUnavailable",
    "BackendUnreachable",
    "BadRequest",
    "CircuitOpen",
    "Forbidden",
    "MethodNotAllowed",
    "NotConfigured",
    "NotFound",
    "NotSupported",
    "OutboundLimited",
    "PayloadTooLarge",
    "RateLimited",
    "ResponseTooLarge",
    "ShuttingDown",
    "TollwayError",
    "Unauthorized",
    "UpstreamHTTPError",
]


class TollwayError(Exception):
    """An error with everything needed to answer it: status, type, code, param, headers."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retry_after = retry_after
        self.should_retry = should_retry
        self.extra_headers: Mapping[str, str] = headers or {}

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def type_name(self) -> str:
        return self.error_type

    def response_headers(self) -> dict[str, str]:
        """Headers that belong with this error: Retry-After, x-should-retry and any extras."""
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            seconds = max(0.0, self.retry_after)
            headers["Retry-After"] = str(max(1, math.ceil(seconds)))
            headers["retry-after-ms"] = str(int(seconds * 1000))
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers


class BadRequest(TollwayError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class Unauthorized(TollwayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(TollwayError):
    status = 403
    error_type = "permission_error"
    default_code = "forbidden"


class NotFound(TollwayError):
    status = 404
    error_type = "not_found_error"
    default_code = "not_found"


class MethodNotAllowed(TollwayError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(TollwayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(TollwayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class NotSupported(TollwayError):
    status = 501
    error_type = "not_implemented_error"
    default_code = "not_implemented"


class NotConfigured(TollwayError):
    """No backend here serves what was asked (no provider key set, say): retrying cannot
    help until the operator changes the configuration, so SDKs are told not to."""

    status = 503
    error_type = "service_unavailable_error"
    default_code = "not_configured"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("should_retry", False)
        super().__init__(message, **kwargs)


class ShuttingDown(TollwayError):
    """This process is stopping: an open stream is ended with this, in-band."""

    status = 503
    error_type = "service_unavailable_error"
    default_code = "server_shutting_down"


class BackendError(TollwayError):
    """A backend call failed.

    `breaker_failure` says whether the circuit breaker should count it (connect errors,
    timeouts, 5xx, resets do; 4xx, our own rejections and client cancels do not).
    `retryable` says whether trying the same backend again may help.
    """

    status = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"
    breaker_failure: bool = True
    retryable: bool = False

    def __init__(self, message: str, *, backend: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.backend = backend


class UpstreamHTTPError(BackendError):
    """The upstream answered with an error status; its type, code and param are kept."""

    def __init__(
        self,
        upstream_status: int,
        message: str,
        *,
        upstream_type: str | None = None,
        body: bytes | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.upstream_status = upstream_status
        self.upstream_type = upstream_type
        self.body = body
        self.breaker_failure = upstream_status >= 500
        self.retryable = upstream_status in (408, 409, 429) or upstream_status >= 500

    @property
    def http_status(self) -> int:
        return self.upstream_status

    @property
    def type_name(self) -> str:
        if self.upstream_type:
            return self.upstream_type
        if self.upstream_status == 429:
            return "rate_limit_error"
        if self.upstream_status >= 500:
            return "upstream_error"
        return "invalid_request_error"


class BackendUnavailable(BackendError):
    status = 503
    error_type = "service_unavailable_error"
    default_code = "backend_unavailable"
    retryable = True


class BackendUnreachable(BackendUnavailable):
    """No connection could be made (refused, DNS, TLS, connect timeout): a failure of the
    backend as a whole, whatever model or call it was for."""


class CircuitOpen(BackendUnavailable):
    default_code = "circuit_open"
    breaker_failure = False
    retryable = False


class BackendOverloaded(BackendUnavailable):
    default_code = "backend_overloaded"
    breaker_failure = False
    retryable = False


class BackendCrashed(BackendUnavailable):
    """The process that ran the call (an isolated DuckDB worker) died before answering:
    the call is lost, the backend starts again for the next one."""

    status = 502
    error_type = "upstream_error"
    default_code = "backend_crashed"


class BackendOutOfMemory(BackendCrashed):
    """The query needed more memory than the backend may use (its ``memory_limit``, or its
    worker's ``worker_memory_mb``, past which the worker is stopped). A fault of the query,
    not of the backend: the breaker does not count it and trying again will not help."""

    default_code = "backend_out_of_memory"
    breaker_failure = False
    retryable = False


class OutboundLimited(BackendError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "upstream_quota"
    breaker_failure = False
    retryable = False


class ResponseTooLarge(BackendError):
    """The answer would carry more than the backend's ``max_response_bytes``: refused
    while it was being fetched (or before, when the SQL alone shows it), never held
    whole in memory first."""

    status = 502
    default_code = "response_too_large"
    breaker_failure = False
    retryable = False


class BackendTimeout(BackendError):
    status = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"
    retryable = False
