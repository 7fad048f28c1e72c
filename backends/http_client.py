"""A lean HTTP/1.1 client for the calls on the hot path: JSON posts and SSE streams to
one upstream origin, over a pool of keep-alive connections.

Why not aiohttp's `ClientSession` here: on this path it costs about 100 µs of CPU per
request (`python -m bench proxy`), more than all of Tollway's own work on the request.
This client writes each request in one `write`, parses answers with llhttp (through
httptools, which uvicorn uses too) and keeps nothing per request beyond the answer.

What it does: keep-alive with a bounded pool (callers queue for a free connection),
TLS with SNI, Content-Length and chunked answers and answers that end at close, reading
a streamed body chunk by chunk with backpressure (the socket pauses while the reader
lags), a connect timeout and an idle-read timeout. A connection the server closed while
idle is dropped before reuse, and idle ones are closed after `keepalive_s` (4 s: below
common servers' keep-alive, 5 s for uvicorn and Node). It never resends a request by
itself: retrying is the guard's decision, with backoff and metrics. What it does not do:
redirects, cookies, proxies, compression (it asks for identity), HTTP/2, request bodies
that are not bytes. The adapters keep aiohttp's session for calls that need those
(uploads relayed as they come).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

from backends.http_answer import (
    Answer,
    ConnectFailed,
    Connection,
    Disconnected,
    HTTPClientError,
    TooLarge,
)

__all__ = ["Answer", "ConnectFailed", "Disconnected", "HTTPClientError", "Pool", "TooLarge"]


class Pool:
    """Keep-alive connections to one origin (scheme, host, port), at most
    `max_connections` at once; requests beyond that wait for a free one, in order.
    Created inside the running loop (an adapter's `start`)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 100,
        connect_timeout_s: float = 5.0,
        keepalive_s: float = 4.0,
        headers: Iterable[tuple[str, str]] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/")
        self._ssl = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        default_port = self.port == (443 if self._ssl else 80)
        host = self.host if default_port else f"{self.host}:{self.port}"
        fixed = [("Host", host), ("Accept-Encoding", "identity"), *headers]
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed).encode("latin-1")
        self._starts: dict[tuple[str, str], bytes] = {}
        """Request line and fixed headers, by method and path, made once each."""
        self._idle: deque[Connection] = deque()
        self._open = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.loop = asyncio.get_running_loop()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        *,
        idle_timeout_s: float | None = None,
        idle_after_first_s: float | None = None,
    ) -> Answer:
        """Send one request and return once the answer's status and headers are in.
        `idle_timeout_s` bounds every silence of the upstream while the answer comes, and
        `idle_after_first_s`, when given, every silence after the first byte of the body
        (a stream's first event may take longer than the gaps between the next ones)."""
        head = self._head(method, path, body, headers)
        connection = await self._acquire()
        answer = Answer(self, connection, idle_timeout_s, idle_after_first_s)
        connection.begin(answer)
        try:
            assert connection.transport is not None
            connection.transport.write(head + body if body else head)
            await answer.wait_for_headers()
        except BaseException:
            self.put_back(connection, reusable=False)
            raise
        return answer

    def _head(
        self, method: str, path: str, body: bytes, headers: Iterable[tuple[str, str]]
    ) -> bytes:
        start = self._starts.get((method, path))
        if start is None:
            if len(self._starts) > 1024:
                self._starts.clear()
            start = self._starts[(method, path)] = (
                f"{method} {self.path}{path} HTTP/1.1\r\n".encode("latin-1") + self._fixed_headers
            )
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
        return b"%s%sContent-Length: %d\r\n\r\n" % (start, extra.encode("latin-1"), len(body))

    async def _acquire(self) -> Connection:
        if self._closed:
            raise ConnectFailed("the pool is closed")
        now = self.loop.time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self._keepalive_s:
                return connection
            self._discard(connection)
        while self._open >= self._max:
            waiter = self.loop.create_future()
            self._queue.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # pass the slot we were given on
                raise
            if self._idle:
                return await self._acquire()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_next()
            raise

    async def _connect(self) -> Connection:
        connection = Connection(self.loop)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self.loop.create_connection(
                    lambda: connection,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError:
            raise ConnectFailed(
                f"no connection to {self.host}:{self.port} within {self._connect_timeout_s:g}s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return connection

    def put_back(self, connection: Connection, *, reusable: bool) -> None:
        if reusable and not self._closed:
            connection.idle_since = self.loop.time()
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1
        self._wake_next()

    def _discard(self, connection: Connection) -> None:
        connection.close()
        self._open -= 1

    def _wake_next(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())
        for waiter in self._queue:
            if not waiter.done():
                waiter.cancel()
