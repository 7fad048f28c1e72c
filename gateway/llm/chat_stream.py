"""A chat stream relayed to the client event by event, never ending in a lie.

Before the first byte, failures go to the retries and fallbacks of
`gateway.llm.targets`. After it, a cut, a stall or a run of malformed events is
continued on another call (`gateway.llm.continuation`) so the client still gets one
whole answer; when that cannot work the stream ends with an in-band error event, never
a silent end. An isolated malformed event is dropped and counted. A complete answer may
be stored in the response cache and replayed.
"""

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
from gateway.llm.continuation import Continuer
from gateway.llm.model_router import Target
from gateway.llm.sse_relay import (
    DONE_FRAME,
    MALFORMED_IN_A_ROW,
    StreamState,
    error_frame,
)
from gateway.llm.stream_io import DRAIN_S, drain, end, outcome, write
from gateway.llm.targets import call_context, request_deadline, start_stream
from gateway.llm.usage import record_usage
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import usage_key
from gateway.ops.streams import open_streams_key

__all__ = ["stream_chat"]

_log = logging.getLogger("tollway.llm")


class _Upstream:
    """The upstream call being relayed: a continuation replaces it."""

    __slots__ = ("events",)

    def __init__(self, events: AsyncIterator[list[bytes]]) -> None:
        self.events = events

    async def aclose(self) -> None:
        await self.events.aclose()  # type: ignore[attr-defined]


async def stream_chat(
    request: web.Request, body: dict[str, Any], targets: list[Target], cache_as: str | None
) -> web.StreamResponse:
    """Relay the stream; with `cache_as`, store it once it completed (``[DONE]`` after a
    finish reason, no failure) so a later identical request replays it."""
    started = time.perf_counter()
    options = body.get("stream_options")
    client_asked_usage = isinstance(options, dict) and options.get("include_usage") is True
    deadline = request_deadline(targets)
    events, first, index = await start_stream(request, body, targets, deadline)
    usage = request[usage_key]
    upstream = _Upstream(events)
    async with aclosing(upstream):
        target = targets[index]
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
        metrics = request.app[metrics_key]
        metrics.time_to_first_token.labels(target.guard.name).observe(time.perf_counter() - started)
        state = StreamState(strip_usage=not client_asked_usage)
        resumer = Continuer(request, body, targets, index, state, call_context(request), deadline)
        sent: list[bytes] | None = [] if cache_as is not None else None
        with request.app[open_streams_key].track():  # a shutdown may end `_relay` only
            failure = await _relay(request, response, upstream, first, state, sent, resumer)
        if failure is not None:
            _log.warning(
                "stream failed",
                extra={"backend": resumer.target.guard.name, "error": failure.code},
            )
            await write(response, error_frame(failure, request.get(request_id_key)))
        client_gone = not await end(response) or state.client_gone
        target = resumer.target
        if state.malformed:
            metrics.malformed_events.labels(target.guard.name).inc(state.malformed)
        # Recorded before the drain: a client that hangs up after [DONE] cancels the
        # handler there, and must not turn a completed stream into a failed one.
        usage.outcome, usage.status = outcome(failure, ended=state.done, client_gone=client_gone)
        record_usage(request, target, time.perf_counter() - started, *state.tokens())
        if state.done:
            drain_s = getattr(target.guard.backend, "done_drain_s", DRAIN_S)
            await drain(upstream.events, drain_s)
    if cache_as is not None and sent is not None and failure is None:
        if state.finished and state.done:
            entry = CacheEntry(200, "text/event-stream", b"".join(sent), time.time())
            await request.app[response_cache_key].store(cache_as, entry)
    return response


async def _relay(
    request: web.Request,
    response: web.StreamResponse,
    upstream: _Upstream,
    first: list[bytes],
    state: StreamState,
    sent: list[bytes] | None,
    resumer: Continuer,
) -> TollwayError | None:
    """Send events until ``[DONE]`` or the end; the failure to report in-band, if any.
    The events of one upstream read go out in one write; with `sent`, every frame sent
    is kept there too. A failure mid-answer is continued on another call when it can be."""
    batch = first
    try:
        while True:
            frames: list[bytes] = []
            for data in batch:
                frame = state.frame(data)
                if frame is not None:
                    frames.append(frame)
                if state.done or state.failed:
                    break
            if frames:
                if not await write(response, b"".join(frames)):
                    state.done = False  # the client went away: closing `events` stops upstream
                    state.client_gone = True
                    return None
                if sent is not None:
                    sent.extend(frames)
            if state.done or state.failed:
                return None
            failure: BackendError
            if state.malformed_run >= MALFORMED_IN_A_ROW:
                failure = BackendError(
                    "the upstream sent events that are not JSON", code="malformed_event"
                )
                _count_on_breaker(resumer.target, "malformed_event")
            else:
                try:
                    batch = await anext(upstream.events)
                    continue
                except StopAsyncIteration:
                    failure = BackendUnavailable(
                        "the upstream ended the stream before the answer was complete"
                    )
                    if not state.finished:
                        _count_on_breaker(resumer.target, "cut")
                except BackendError as error:
                    failure = error
            if state.finished:  # the answer is whole; only its end was lost
                await write(response, DONE_FRAME)
                if sent is not None:
                    sent.append(DONE_FRAME)
                state.done = True
                return None
            await upstream.aclose()
            resumed = await resumer.resume(failure)
            if resumed is None:
                return failure
            upstream.events, batch = resumed
            state.malformed_run = 0  # a new upstream: its own events to judge
    except asyncio.CancelledError as exc:
        if not request.app[open_streams_key].is_shutdown(exc):
            raise
        return ShuttingDown("the server is shutting down; the answer was cut here")


def _count_on_breaker(target: Target, reason: str) -> None:
    target.guard.record_stream_failure(target.upstream_model, reason)
