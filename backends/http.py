"""What the HTTP adapters share: the pooled clients of a backend, option checks, and the
translation of transport failures and error statuses into `gateway.errors`."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, cast

import aiohttp
import orjson

from backends.base import OptionError
from backends.http_client import ConnectFailed, Disconnected, Pool, TooLarge
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BackendUnreachable,
    ResponseTooLarge,
    UpstreamHTTPError,
)

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "HTTPOptions",
    "new_pool",
    "ResponseMeter",
    "new_session",
    "option_number",
    "option_string",
    "raise_for_upstream",
    "read_capped",
    "retry_after_s",
    "too_large",
    "transport_error",
]

# Headers an adapter sends on every call; the caller's own headers never reach upstream.
USER_AGENT = "tollway"
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class HTTPOptions:
    """The options every HTTP adapter reads from its backend's config section."""

    __slots__ = ("api_key", "base_url", "extra_headers", "max_connections", "max_response_bytes")

    def __init__(
        self,
        options: Mapping[str, Any],
        *,
        default_base_url: str | None,
        max_response_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        base_url = option_string(options, "base_url", default_base_url)
        if base_url is None:
            raise OptionError("base_url", "required: the provider's API root, e.g. https://…/v1")
        if not base_url.startswith(("http://", "https://")):
            raise OptionError("base_url", f"expected an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = option_string(options, "api_key", None) or None
        self.max_connections = int(option_number(options, "max_connections", 100, minimum=1))
        self.max_response_bytes = max_response_bytes
        """The most bytes one answer (a JSON body, or a whole stream) may bring: the
        backend's ``max_response_bytes``, a key every backend has."""
        headers = options.get("headers", {})
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise OptionError("headers", "expected a mapping of header names to strings")
        if any(k.lower() == "authorization" for k in headers):
            raise OptionError("headers", "set the provider's key with api_key, not a header")
        self.extra_headers: dict[str, str] = dict(headers)

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        headers.update(self.extra_headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def option_string(options: Mapping[str, Any], key: str, default: str | None) -> str | None:
    value = options.get(key, default)
    if value is not None and not isinstance(value, str):
        raise OptionError(key, f"expected a string, got {type(value).__name__}")
    return value


def option_number(
    options: Mapping[str, Any], key: str, default: float, *, minimum: float = 0.0
) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(key, f"expected a number, got {value!r}")
    if value < minimum:
        raise OptionError(key, f"must be at least {minimum}, got {value}")
    return float(value)


def new_session(
    options: HTTPOptions, *, connect_timeout_s: float, read_timeout_s: float | None
) -> aiohttp.ClientSession:
    """A session with an explicit pool: bounded connections, DNS cached, keep-alive on.

    `read_timeout_s` bounds every gap between bytes from the upstream (a silent or
    stalled provider); the overall deadline is the guard's.
    """
    connector = aiohttp.TCPConnector(
        limit=options.max_connections,
        limit_per_host=options.max_connections,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        base_url=None,
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        ),
        headers=options.headers(),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        raise_for_status=False,
        trust_env=False,
    )


def new_pool(options: HTTPOptions, *, connect_timeout_s: float) -> Pool:
    """The lean keep-alive pool for JSON and SSE calls to the backend's API root."""
    return Pool(
        options.base_url,
        max_connections=options.max_connections,
        connect_timeout_s=connect_timeout_s,
        headers=options.headers().items(),
    )


class AnyAnswer(Protocol):
    """An answer's status and headers, and its body on demand: what both clients give."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...


class UpstreamAnswer(AnyAnswer, Protocol):
    """The lean client's answer: read whole within a limit, or chunk by chunk."""

    async def read(self, limit: int | None = None) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


def too_large(backend: str, limit: int) -> ResponseTooLarge:
    """The upstream's answer passed `max_response_bytes`: refused, not retried, and not a
    breaker failure (the backend answered; the answer is what is wrong)."""
    return ResponseTooLarge(
        f"backend {backend!r} answered more than {limit} bytes (its max_response_bytes)",
        backend=backend,
        should_retry=False,
    )


async def read_capped(response: UpstreamAnswer, limit: int, backend: str) -> bytes:
    """The body, counted while it arrives: past `limit` bytes the read stops (the rest is
    never held in memory) and `too_large` is raised."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(backend, limit)
    try:
        return await response.read(limit)
    except TooLarge:
        raise too_large(backend, limit) from None


class ResponseMeter:
    """Counts a streamed answer's bytes; `add` raises `too_large` past the limit."""

    __slots__ = ("_backend", "_limit", "seen")

    def __init__(self, limit: int, backend: str) -> None:
        self._limit = limit
        self._backend = backend
        self.seen = 0

    def add(self, size: int) -> None:
        self.seen += size
        if self.seen > self._limit:
            raise too_large(self._backend, self._limit)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The upstream's wish: ``retry-after-ms``, else ``Retry-After`` in seconds or a date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transport_error(backend: str, exc: BaseException) -> BackendError:
    """A connect error, reset or broken answer: the backend is unavailable (retryable).

    Failing to connect at all (refused, DNS, TLS, connect timeout) is `BackendUnreachable`,
    a failure of the whole backend; a read that timed out (``sock_read``: nothing came in
    time) is `BackendTimeout`, which is not retried on the same backend."""
    if isinstance(
        exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | ConnectFailed
    ):
        return BackendUnreachable(
            f"backend {backend!r} refused or could not be reached", backend=backend, retry_after=1
        )
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return BackendTimeout(f"backend {backend!r} sent nothing in time", backend=backend)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | Disconnected):
        message = f"backend {backend!r} closed the connection"
    else:
        message = f"backend {backend!r} sent a broken answer"
    return BackendUnavailable(message, backend=backend, retry_after=1)


async def raise_for_upstream(backend: str, response: AnyAnswer) -> None:
    """Raise `UpstreamHTTPError` for an error status, keeping the upstream's message,
    type, code and param (OpenAI's shape, or Tavily's ``detail.error``)."""
    if response.status < 400:
        return
    raw = await _error_body(response)
    if response.status in (401, 403):
        # The provider refused Tollway's own credentials: an operator's problem, and the
        # provider's message may quote part of the key. The client learns neither.
        raise BackendError(
            f"backend {backend!r} refused the gateway's credentials",
            backend=backend,
            code="upstream_auth_failed",
            should_retry=False,
        )
    message, upstream_type, code, param = _error_fields(raw)
    raise UpstreamHTTPError(
        response.status,
        message or f"backend {backend!r} answered {response.status}",
        upstream_type=upstream_type,
        code=code or _default_code(response.status),
        param=param,
        body=raw,
        backend=backend,
        retry_after=retry_after_s(response.headers),
        # the same request will be refused again: tell the SDKs not to retry it
        should_retry=False
        if response.status < 500 and response.status not in (408, 409, 429)
        else None,
    )


async def _error_body(response: AnyAnswer, limit: int = 1024 * 1024) -> bytes:
    """An error answer's body, at most `limit` bytes of it: enough for any message."""
    parts: list[bytes] = []
    size = 0
    chunks = (
        response.content.iter_any()
        if isinstance(response, aiohttp.ClientResponse)
        else cast(UpstreamAnswer, response).chunks()
    )
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def _error_fields(raw: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None, None, None
    if not isinstance(body, dict):
        return None, None, None, None
    error = body.get("error")
    if isinstance(error, dict):
        return (
            _text(error.get("message")),
            _text(error.get("type")),
            _text(error.get("code")),
            _text(error.get("param")),
        )
    detail = body.get("detail")
    if isinstance(detail, dict) and isinstance(detail.get("error"), str):
        return detail["error"], None, None, None
    if isinstance(detail, str):
        return detail, None, None, None
    if isinstance(error, str):
        return error, None, None, None
    return None, None, None, None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _default_code(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "upstream_error"
    return "upstream_rejected"
