"""OpenAI's HTTP API, and every server that speaks it: Groq, vLLM, Ollama, llama.cpp.

Options (beside the common backend keys): ``base_url`` (the API root including ``/v1``,
default OpenAI's), ``api_key``, ``headers`` (extra static headers, e.g.
``OpenAI-Organization``), ``max_connections`` (pool size, default 100),
``first_token_timeout_s`` (a stream's first event, and a JSON answer's first byte,
default 15: past it the call fails over) and ``idle_timeout_s`` (alias
``stream_idle_timeout_s``: the longest silence between a stream's events, default 30),
``done_drain_s`` (how long to read on after ``[DONE]`` for the upstream to end its answer,
so the connection can be reused, default 0.5), ``max_response_bytes`` (the most one answer
may bring, a JSON body or a whole stream, counted as it arrives; default 64 MiB).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from backends.base import (
    Backend,
    BackendKind,
    CallContext,
    Health,
    JSONResponse,
    StreamHead,
    reject_unknown_options,
)
from backends.http import (
    HTTPOptions,
    ResponseMeter,
    new_pool,
    new_session,
    option_number,
    raise_for_upstream,
    read_capped,
    transport_error,
)
from backends.http_client import HTTPClientError, Pool
from gateway.errors import BackendTimeout, BackendUnavailable

__all__ = ["OpenAIBackend", "create"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_OWN_OPTIONS = frozenset(
    {"base_url", "api_key", "headers", "max_connections", "first_token_timeout_s",
     "idle_timeout_s", "stream_idle_timeout_s", "done_drain_s"}
)  # fmt: skip
_HEALTH_TIMEOUT_S = 3.0


def create(
    name: str,
    options: Mapping[str, Any],
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_response_bytes: int = 64 * 1024 * 1024,
) -> Backend:

    reject_unknown_options(options, _OWN_OPTIONS, "openai")
    return OpenAIBackend(
        name,
        HTTPOptions(
            options, default_base_url=DEFAULT_BASE_URL, max_response_bytes=max_response_bytes
        ),
        connect_timeout_s=connect_timeout_s,
        first_token_timeout_s=option_number(options, "first_token_timeout_s", 15.0, minimum=0.01),
        idle_timeout_s=option_number(
            options,
            "stream_idle_timeout_s",
            option_number(options, "idle_timeout_s", 30.0, minimum=0.01),
            minimum=0.01,
        ),
        done_drain_s=option_number(options, "done_drain_s", 0.5, minimum=0.0),
    )


class OpenAIBackend:
    """JSON calls and SSE streams go through the lean pooled client
    (`backends.http_client`); uploads relayed as they arrive (audio) through aiohttp's
    session, which streams a request body."""

    kind: BackendKind = "llm"

    def __init__(
        self,
        name: str,
        options: HTTPOptions,
        *,
        connect_timeout_s: float,
        first_token_timeout_s: float,
        idle_timeout_s: float,
        done_drain_s: float = 0.5,
    ) -> None:
        self.name = name
        self.options = options
        self.connect_timeout_s = connect_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.done_drain_s = done_drain_s
        self._session: aiohttp.ClientSession | None = None
        self._pool: Pool | None = None
        self._base = options.base_url
        # A JSON answer's first byte (its headers: the provider answers when it is done)
        # must come within the first-token deadline, so a stuck call fails over. Until a
        # stream's first event the guard's first-token deadline rules, so its read bound
        # starts at the larger of the two and tightens to the idle timeout after that.
        self._first_read_s = max(idle_timeout_s, first_token_timeout_s)
        # Uploads relayed through aiohttp: a request's timeout replaces the session's.
        self._json_timeout = aiohttp.ClientTimeout(
            connect=connect_timeout_s, sock_read=first_token_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            connect=connect_timeout_s, sock_read=self._first_read_s
        )

    async def start(self) -> None:
        self._pool = new_pool(self.options, connect_timeout_s=self.connect_timeout_s)
        self._session = new_session(
            self.options, connect_timeout_s=self.connect_timeout_s, read_timeout_s=None
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendUnavailable(f"backend {self.name!r} is not started", backend=self.name)
        return self._session

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise BackendUnavailable(f"backend {self.name!r} is not started", backend=self.name)
        return self._pool

    async def health(self) -> Health:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                async with await self.pool.request("GET", "/models") as answer:
                    await answer.read()
            ok = answer.status < 500
            detail = "" if ok else f"answered {answer.status}"
        except (HTTPClientError, TimeoutError) as exc:
            ok, detail = False, type(exc).__name__
        return Health(ok, detail, time.perf_counter() - started)

    async def chat(self, body: Mapping[str, Any] | bytes, ctx: CallContext) -> JSONResponse:
        return await self.call_json("POST", "/chat/completions", ctx, body=body)

    async def embeddings(self, body: Mapping[str, Any] | bytes, ctx: CallContext) -> JSONResponse:
        return await self.call_json("POST", "/embeddings", ctx, body=body)

    async def models(self, ctx: CallContext) -> list[dict[str, Any]]:
        answer = await self.call_json("GET", "/models", ctx)
        try:
            payload = orjson.loads(answer.body)
        except orjson.JSONDecodeError as exc:
            raise transport_error(self.name, exc) from exc
        data = payload.get("data") if isinstance(payload, dict) else None
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    def chat_stream(self, body: Mapping[str, Any], ctx: CallContext) -> AsyncIterator[list[bytes]]:
        """The data of the SSE events (``[DONE]`` included) each network read completes,
        comments and other fields dropped. Raises before the first item for a refused or
        failed call; a read gap longer than ``idle_timeout_s`` raises `BackendTimeout`."""
        return self.event_stream("/chat/completions", body, ctx)

    # --- the rest of the OpenAI surface: responses, completions, moderations, audio, images

    async def call_json(
        self,
        method: str,
        path: str,
        ctx: CallContext,
        *,
        body: Mapping[str, Any] | bytes | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> JSONResponse:
        """One JSON call to `path` under the API root (`body` as a mapping, or JSON already
        encoded); an error status raises."""
        try:
            async with await self.pool.request(
                method,
                _with_query(path, params),
                _encoded(body),
                (("X-Request-ID", ctx.request_id),),
                idle_timeout_s=self.first_token_timeout_s,
            ) as answer:
                await raise_for_upstream(self.name, answer)
                raw = await read_capped(answer, self.options.max_response_bytes, self.name)
                return JSONResponse(answer.status, raw, passed_headers(answer.headers))
        except TimeoutError:
            raise BackendTimeout(
                f"backend {self.name!r} sent nothing in time", backend=self.name
            ) from None
        except HTTPClientError as exc:
            raise transport_error(self.name, exc) from exc

    async def event_stream(
        self,
        path: str,
        body: Mapping[str, Any] | None,
        ctx: CallContext,
        *,
        method: str = "POST",
        params: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[list[bytes]]:
        """The data of the SSE events of any streamed answer, as `chat_stream` gives them."""
        try:
            async with await self.pool.request(
                method,
                _with_query(path, params),
                orjson.dumps(body) if body is not None else b"",
                (("X-Request-ID", ctx.request_id), ("Accept", "text/event-stream")),
                idle_timeout_s=self._first_read_s,
                idle_after_first_s=self.idle_timeout_s,
            ) as answer:
                await raise_for_upstream(self.name, answer)
                meter = ResponseMeter(self.options.max_response_bytes, self.name)
                async for events in sse_events(answer.chunks(), meter):
                    yield events
        except TimeoutError:
            raise BackendTimeout(
                f"backend {self.name!r} went silent for {self.idle_timeout_s:g}s",
                backend=self.name,
            ) from None
        except HTTPClientError as exc:
            raise transport_error(self.name, exc) from exc

    async def relay(
        self,
        path: str,
        ctx: CallContext,
        *,
        body: bytes | AsyncIterator[bytes],
        content_type: str,
        content_length: int | None = None,
        accept: str | None = None,
        idle_timeout: bool = True,
    ) -> AsyncIterator[StreamHead | bytes]:
        """POST `body` and yield the answer's head, then its chunks as they arrive."""
        headers = {"X-Request-ID": ctx.request_id, "Content-Type": content_type}
        if content_length is not None:
            headers["Content-Length"] = str(content_length)
        if accept is not None:
            headers["Accept"] = accept
        try:
            async with self.session.post(
                f"{self._base}{path}",
                data=body,
                headers=headers,
                timeout=self._stream_timeout if idle_timeout else self._json_timeout,
            ) as response:
                await raise_for_upstream(self.name, response)
                yield StreamHead(
                    response.status,
                    response.headers.get("Content-Type", "application/octet-stream"),
                    # a compressed answer is relayed decompressed: its length is not known
                    None if "Content-Encoding" in response.headers else response.content_length,
                    passed_headers(response.headers),
                )
                async for chunk in response.content.iter_any():
                    yield chunk
        except TimeoutError:
            raise BackendTimeout(
                f"backend {self.name!r} went silent for {self.idle_timeout_s:g}s",
                backend=self.name,
            ) from None
        except aiohttp.ClientError as exc:
            raise transport_error(self.name, exc) from exc


def _encoded(body: Mapping[str, Any] | bytes | None) -> bytes:
    if body is None:
        return b""
    return body if isinstance(body, bytes) else orjson.dumps(body)


def _with_query(path: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


async def sse_events(
    chunks: AsyncIterator[bytes], meter: ResponseMeter
) -> AsyncIterator[list[bytes]]:
    """The data of the SSE events in `chunks`, grouped by the chunk that completed them;
    `meter` counts the bytes (past its limit it raises)."""
    buffer = b""
    async for chunk in chunks:
        meter.add(len(chunk))
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        *blocks, buffer = buffer.split(b"\n\n")
        if blocks:
            events = [data for data in map(event_data, blocks) if data is not None]
            if events:
                yield events
    last = event_data(buffer.strip(b"\n"))
    if last is not None:
        yield [last]


def event_data(block: bytes) -> bytes | None:
    """The data of one SSE event (its lines without the blank line that ends it), or
    None for an event without data, such as a comment."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the usual shape: one data line
    data = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(data) if data else None


def passed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Upstream headers worth giving the client: the provider's processing time. Its
    ``x-ratelimit-*`` are not passed: they describe Tollway's quota, not the caller's."""
    value = headers.get("openai-processing-ms")
    return {"openai-processing-ms": value} if value is not None else {}
