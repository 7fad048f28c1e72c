"""One upstream connection and the answer it receives, for `backends.http_client`.

`Connection` is an asyncio protocol that feeds llhttp (httptools) and hands what it
parses to the `Answer` in progress; `Answer` is what a caller reads: status, headers,
then the body whole or chunk by chunk, with the socket paused while a chunk reader lags.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final, Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "Answer", "ConnectFailed", "Connection", "Disconnected", "HTTPClientError", "TooLarge",
]  # fmt: skip

_HIGH_WATER: Final = 256 * 1024
"""Bytes of an unread body buffered before the socket stops reading."""


class _Pool(Protocol):
    loop: asyncio.AbstractEventLoop

    def put_back(self, connection: Connection, *, reusable: bool) -> None: ...


class HTTPClientError(Exception):
    """The upstream could not be talked to; nothing about the answer is known."""


class ConnectFailed(HTTPClientError):
    """No connection: refused, unreachable, name not resolved, or the TLS handshake failed."""


class TooLarge(HTTPClientError):
    """The answer's body passed the reader's limit; `size` bytes had come."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the answer passed its limit ({size} bytes read)")
        self.size = size


class Disconnected(HTTPClientError):
    """The connection closed, or sent what is not HTTP, before the answer was complete."""


class Connection(asyncio.Protocol):
    """One keep-alive connection: a parser, the answer being received, its waiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answered = 0
        self.idle_since = 0.0
        self._answer: Answer | None = None

    def begin(self, answer: Answer | None) -> None:
        self._answer = answer

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None:  # nothing asked: an idle connection must stay silent
            self.close()
            return
        answer.last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Disconnected(f"the upstream sent what is not HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if answer is not None and not answer.complete:
            if answer.headers_done and not answer.framed:
                answer.finish(keep_alive=False)  # a body that ends when the connection does
            else:
                self._fail(Disconnected("the upstream closed the connection mid-answer"))

    def pause_writing(self) -> None:  # pragma: no cover - requests are small
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._answer is not None
        self._answer.raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._answer is not None
        self._answer.headers_received(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self._answer is not None
        self._answer.feed(body)

    def on_message_complete(self) -> None:
        answer = self._answer
        assert answer is not None
        answer.finish(keep_alive=self._parser.should_keep_alive())

    def _fail(self, exc: HTTPClientError) -> None:
        if self._answer is not None:
            self._answer.fail(exc)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Answer:
    """An upstream's answer: status and headers first, then the body, read whole or as it
    comes. Use as an async context manager: leaving it returns the connection to the pool
    when the body was read to its end, and closes it otherwise."""

    __slots__ = (
        "_buffered", "_chunks", "_error", "_keep_alive", "_limit", "_loop", "_pool", "_released",
        "_waiter", "_whole", "complete", "connection", "framed", "headers", "headers_done",
        "idle_after_first_s", "idle_timeout_s", "last_read", "raw_headers", "status",
    )  # fmt: skip

    def __init__(
        self,
        pool: _Pool,
        connection: Connection,
        idle_timeout_s: float | None,
        idle_after_first_s: float | None = None,
    ) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.connection = connection
        self.idle_timeout_s = idle_timeout_s
        """The longest silence of the upstream while the answer comes (None: unbounded)."""
        self.idle_after_first_s = idle_after_first_s
        """When set, the bound that replaces `idle_timeout_s` once the first body byte came."""
        self.status = 0
        self.raw_headers: list[tuple[str, str]] = []
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.headers_done = False
        self.framed = True
        self.complete = False
        self.last_read = self._loop.time()
        self._keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: HTTPClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._whole = False
        self._limit: int | None = None

    # fed by the connection
    def headers_received(self, status: int) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(self.raw_headers))
        self.framed = "Content-Length" in self.headers or "chunked" in self.headers.get(
            "Transfer-Encoding", ""
        )
        self.headers_done = True
        self._wake()

    def feed(self, body: bytes) -> None:
        if self.idle_after_first_s is not None:
            self.idle_timeout_s, self.idle_after_first_s = self.idle_after_first_s, None
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._whole:
            self.connection.pause_reading()
        if self._limit is not None and self._buffered > self._limit:
            self.connection.pause_reading()  # past the reader's limit: read no more
        self._wake()

    def finish(self, *, keep_alive: bool) -> None:
        self.complete = True
        self._keep_alive = keep_alive
        self._wake()

    def fail(self, exc: HTTPClientError) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # read by the caller
    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = waiter = self._loop.create_future()
        timer = None
        if self.idle_timeout_s is not None:
            timer = self._loop.call_at(self.last_read + self.idle_timeout_s, self._check_idle)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self._error is not None:
            raise self._error

    def _check_idle(self) -> None:
        assert self.idle_timeout_s is not None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._loop.time() - self.last_read >= self.idle_timeout_s:
            waiter.set_exception(TimeoutError())
        else:
            self._loop.call_at(self.last_read + self.idle_timeout_s, self._check_idle)

    async def wait_for_headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, each item what one or more reads brought."""
        while True:
            if self._chunks:
                chunk = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                if self._buffered > _HIGH_WATER:
                    self.connection.resume_reading()
                self._buffered = 0
                yield chunk
            elif self.complete:
                return
            else:
                await self._wait()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (buffered without backpressure: for answers of bounded size);
        past `limit` bytes the read stops and `TooLarge` is raised, the rest never read."""
        self._whole = True
        self._limit = limit
        if self._buffered > _HIGH_WATER:
            self.connection.resume_reading()
        while not self.complete:
            if limit is not None and self._buffered > limit:
                raise TooLarge(self._buffered)
            await self._wait()
        if limit is not None and self._buffered > limit:
            raise TooLarge(self._buffered)
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give the connection back (reusable only when the whole answer was read)."""
        if self._released:
            return
        self._released = True
        connection = self.connection
        connection.answered += 1
        connection.begin(None)
        reusable = self.complete and self._keep_alive and not self._chunks
        self._pool.put_back(connection, reusable=reusable and not connection.closed)


_NO_HEADERS: Final[CIMultiDictProxy[str]] = CIMultiDictProxy(CIMultiDict())
