"""A chat stream relayed to the client event by event, never ending in a lie: a cut,
stall or malformed event becomes an in-band error event; a complete answer may be stored
in the response cache and replayed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from aiohttp import web

from gateway.cache.response_cache import CacheEntry, response_cache_key
from gateway.edge.request_id import request_id_key
from gateway.errors import BackendError, BackendUnavailable, ShuttingDown, TollwayError
from gateway.llm.model_router import Target
from gateway.llm.sse_relay import DONE_FRAME, MalformedEvent, StreamState, error_frame
from gateway.llm.targets import open_stream
from gateway.llm.usage import record_usage
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import usage_key
from gateway.ops.streams import open_streams_key

__all__ = ["stream_chat"]

_log = logging.getLogger("tollway.llm")

_DRAIN_AFTER_DONE_S = 0.5
"""How long to wait for the upstream to close after ``[DONE]`` before closing it, for a
backend without its own ``done_drain_s``."""


async def stream_chat(
    request: web.Request, body: dict[str, Any], targets: list[Target], cache_as: str | None
) -> web.StreamResponse:
    """Relay the stream; with `cache_as`, store it once it completed (``[DONE]`` after a
    finish reason, no failure) so a later identical request replays it."""
    started = time.perf_counter()
    options = body.get("stream_options")
    client_asked_usage = isinstance(options, dict) and options.get("include_usage") is True
    events, first, target = await open_stream(request, body, targets)
    usage = request[usage_key]
    async with aclosing(events):  # type: ignore[type-var]
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                "X-Tollway-Model": target.name,
                "X-Tollway-Backend": target.guard.name,
            }
        )
        if cache_as is not None:
            response.headers["X-Cache"] = "MISS"
        await response.prepare(request)
        request.app[metrics_key].time_to_first_token.labels(target.guard.name).observe(
            time.perf_counter() - started
        )
        state = StreamState(strip_usage=not client_asked_usage)
        sent: list[bytes] | None = [] if cache_as is not None else None
        with request.app[open_streams_key].track():  # a shutdown may end `_relay` only
            failure = await _relay(request, response, events, first, state, sent)
        if failure is not None:
            _log.warning(
                "stream failed", extra={"backend": target.guard.name, "error": failure.code}
            )
            await _write(response, error_frame(failure, request.get(request_id_key)))
        client_gone = not await _end(response) or state.client_gone
        # Recorded before the drain: a client that hangs up after [DONE] cancels the
        # handler there, and must not turn a completed stream into a failed one.
        usage.outcome, usage.status = _outcome(state, failure, client_gone)
        record_usage(request, target, time.perf_counter() - started, *state.tokens())
        if state.done:
            await _drain(events, getattr(target.guard.backend, "done_drain_s", _DRAIN_AFTER_DONE_S))
    if cache_as is not None and sent is not None and failure is None:
        if state.finished and state.done:
            entry = CacheEntry(200, "text/event-stream", b"".join(sent), time.time())
            await request.app[response_cache_key].store(cache_as, entry)
    return response


def _outcome(
    state: StreamState, failure: TollwayError | None, client_gone: bool
) -> tuple[str, int]:
    """How the stream ended for its client, and the status that records it."""
    if isinstance(failure, ShuttingDown):
        return "shutdown", 503
    if failure is not None:
        return "upstream_failed", 502
    if state.done and not client_gone:
        return "completed", 200
    return "client_gone", 499


async def _relay(
    request: web.Request,
    response: web.StreamResponse,
    events: AsyncIterator[list[bytes]],
    first: list[bytes],
    state: StreamState,
    sent: list[bytes] | None,
) -> TollwayError | None:
    """Send events until ``[DONE]`` or the end; the failure to report in-band, if any.
    The events of one upstream read go out in one write; with `sent`, every frame sent
    is kept there too."""
    batch = first
    frames: list[bytes] = []
    try:
        while True:
            for data in batch:
                frame = state.frame(data)
                if frame is not None:
                    frames.append(frame)
                if state.done or state.failed:
                    break
            if frames:
                if not await _write(response, b"".join(frames)):
                    state.done = False  # the client went away: closing `events` stops upstream
                    state.client_gone = True
                    return None
                if sent is not None:
                    sent.extend(frames)
            frames = []
            if state.done or state.failed:
                break
            batch = await anext(events)
    except StopAsyncIteration:
        if not state.finished:
            return BackendUnavailable(
                "the upstream ended the stream before the answer was complete"
            )
        await _write(response, DONE_FRAME)  # complete, but the upstream forgot [DONE]
        if sent is not None:
            sent.append(DONE_FRAME)
        state.done = True
        return None
    except MalformedEvent as exc:
        if frames:
            await _write(response, b"".join(frames))  # the good events before the bad one
        return BackendError(str(exc), code="malformed_event")
    except BackendError as error:
        return error
    except asyncio.CancelledError as exc:
        if not request.app[open_streams_key].is_shutdown(exc):
            raise
        return ShuttingDown("the server is shutting down; the answer was cut here")
    return None


async def _drain(events: AsyncIterator[list[bytes]], limit_s: float) -> None:
    """After ``[DONE]`` the upstream closes at once: read to its end, so its connection
    goes back to the pool and the breaker sees a finished call; give up after a moment."""
    try:
        async with asyncio.timeout(limit_s):
            async for _ in events:
                pass
    except (TimeoutError, BackendError):
        pass


async def _write(response: web.StreamResponse, frame: bytes) -> bool:
    try:
        await response.write(frame)
    except ConnectionResetError:
        return False
    return True


async def _end(response: web.StreamResponse) -> bool:
    try:
        await response.write_eof()
    except ConnectionResetError:
        return False
    return True
