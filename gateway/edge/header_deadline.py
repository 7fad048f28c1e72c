"""The listening site: a deadline for request headers, and every connection tracked.

aiohttp has no header read timeout: a client that opens a connection and trickles its
request line and headers a byte at a time holds the connection (and a file descriptor)
until ``keepalive_timeout_s``. `HeaderDeadlineSite` listens like `web.TCPSite` but wraps
each connection's protocol: from the moment the connection opens, the headers of its
first request must be complete (the blank line seen) within ``server.header_timeout_s``,
or the client gets ``408 Request Timeout`` and the connection is closed. The body is not
covered (the body limit and handler timeouts are); later requests on a kept-alive
connection are bounded by ``keepalive_timeout_s``, which aiohttp enforces while it waits
for a complete request.

The site also keeps the open connections (`connections`), each knowing when its client
last sent a byte and whether a request is being served on it, so a drain can close the
idle ones gracefully instead of all at once (`gateway.edge.drain`); and its protocol is
`RefusingRequestHandler`, so requests the parser refuses get the JSON error shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.edge.refusals import ParserRefusals, RefusingRequestHandler

__all__ = ["Connection", "HeaderDeadlineSite"]

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


class Connection(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; closes the connection if the first
    request's headers are not complete in time; knows when the client last sent a byte."""

    __slots__ = ("_inner", "_timeout_s", "_timer", "_tail", "_transport", "_owner", "last_seen")

    def __init__(
        self, inner: RequestHandler, timeout_s: float, owner: set[Connection] | None = None
    ) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None
        self._owner = owner
        self.last_seen = time.monotonic()
        """`time.monotonic()` when the client last sent a byte (or connected)."""

    @property
    def busy(self) -> bool:
        """A request is being served, or a complete one waits to be: not idle."""
        # aiohttp keeps these two on its protocol (3.9 to 3.14); without them, assume busy
        # so the connection is left to aiohttp's own shutdown rather than closed under a
        # request.
        return bool(
            getattr(self._inner, "_request_in_progress", True)
            or getattr(self._inner, "_messages", True)
        )

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def close_if_idle(self) -> bool:
        """Close the connection (a FIN, never a reset) if no request is on it."""
        if self.closed or self.busy:
            return False
        self._inner.force_close()
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._timeout_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._expire)
        if self._owner is not None:
            self._owner.add(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._disarm()
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        if self._owner is not None:
            self._owner.discard(self)
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
    `header_timeout_s` (0 turns the deadline off), tracked in `connections`, and whose
    parser refusals are answered in the error shape."""

    __slots__ = ("_header_timeout_s", "_refusals", "connections")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        header_timeout_s: float,
        refusals: ParserRefusals | None = None,
        backlog: int = 128,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_port=reuse_port)
        self._header_timeout_s = header_timeout_s
        self._refusals = refusals or ParserRefusals(None)
        self.connections: set[Connection] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        timeout_s = self._header_timeout_s
        refusals = self._refusals
        connections = self.connections
        # The keyword arguments the runner gave its server (keep-alive, line and header
        # limits, …), for the protocol aiohttp would otherwise build with them.
        options: dict[str, Any] = dict(server._kwargs)

        def protocol() -> asyncio.Protocol:
            inner = RefusingRequestHandler(server, loop=loop, refusals=refusals, **options)
            return Connection(inner, timeout_s, connections)

        factory: Callable[[], asyncio.Protocol] = protocol
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
