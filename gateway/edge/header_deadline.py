"""A deadline for request headers, against slow-loris clients.

aiohttp has no header read timeout: a client that opens a connection and trickles its
request line and headers a byte at a time holds the connection (and a file descriptor)
until ``keepalive_timeout_s``. `HeaderDeadlineSite` listens like `web.TCPSite` but wraps
each connection's protocol: from the moment the connection opens, the headers of its
first request must be complete (the blank line seen) within ``server.header_timeout_s``,
or the client gets ``408 Request Timeout`` and the connection is closed. The body is not
covered (the body limit and handler timeouts are); later requests on a kept-alive
connection are bounded by ``keepalive_timeout_s``, which aiohttp enforces while it waits
for a complete request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

from aiohttp import web

__all__ = ["HeaderDeadlineSite"]

_log = logging.getLogger("tollway.serve")

_END_OF_HEADERS: Final = b"\r\n\r\n"
_TIMEOUT_BODY: Final = (
    b'{"error": {"message": "request headers took too long", "type": "invalid_request_error",'
    b' "code": "request_timeout", "param": null, "request_id": null}}'
)
_TIMEOUT_ANSWER: Final = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class _HeaderDeadline(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; closes the connection if the first
    request's headers are not complete in time."""

    __slots__ = ("_inner", "_timeout_s", "_timer", "_tail", "_transport")

    def __init__(self, inner: asyncio.Protocol, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._expire)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._disarm()
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tail = b""

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        _log.info(
            "request headers timed out",
            extra={"client_ip": peer[0] if peer else None, "timeout_s": self._timeout_s},
        )
        transport.write(_TIMEOUT_ANSWER)
        transport.close()


class HeaderDeadlineSite(web.TCPSite):
    """`web.TCPSite` whose connections must send their first request's headers within
    `header_timeout_s` (0 turns the deadline off)."""

    __slots__ = ("_header_timeout_s",)

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        header_timeout_s: float,
        backlog: int = 128,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_port=reuse_port)
        self._header_timeout_s = header_timeout_s

    async def start(self) -> None:
        if self._header_timeout_s <= 0:
            await super().start()
            return
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        timeout_s = self._header_timeout_s
        factory: Callable[[], asyncio.Protocol] = lambda: _HeaderDeadline(server(), timeout_s)  # noqa: E731
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
