"""Any SSE answer of the OpenAI surface (Responses, legacy completions) relayed event by
event, never ending in a lie: a cut, stall or malformed event becomes the API's own
in-band error event; a shutdown ends it the same way.

What an API's events mean is an `EventState`'s business (one parse per event); opening
the stream on the first target that answers, the relay loop, the outcome on the usage
record and the drain after the end are shared here. (Chat streams have their own relay,
`gateway.llm.chat_stream`, with its cache.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from aiohttp import web

from gateway.edge.request_id import request_id_key
from gateway.errors import BackendError, BackendUnavailable, ShuttingDown, TollwayError
from gateway.llm.api_usage import TokenUsage
from gateway.llm.model_router import Target
from gateway.llm.stream_io import end, outcome, write
from gateway.llm.targets import fallback_reason, note_fallback, request_deadline
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import usage_key
from gateway.ops.streams import open_streams_key

__all__ = [
    "EventState", "MalformedEvent", "open_events", "relay_events",
]  # fmt: skip

_log = logging.getLogger("tollway.llm")

T = TypeVar("T")
Events = AsyncIterator[list[bytes]]


class MalformedEvent(ValueError):
    """An upstream event that is not a JSON object."""


class EventState(Protocol):
    ended: bool
    """The API's last event went by (a terminal event, ``[DONE]``): stop reading."""
    complete: bool
    """The answer is whole, even if the upstream's own end marker is still missing."""
    failed: bool
    """The upstream reported its own failure in-band; it was relayed as it came."""
    usage: TokenUsage

    def frame(self, data: bytes) -> bytes | None:
        """The bytes to send for one upstream event, None to send nothing; raises
        `MalformedEvent`."""

    def finish(self) -> bytes:
        """What to send when the upstream ended after a complete answer without its end
        marker (chat's ``[DONE]``); may be empty."""

    def error_frames(self, error: TollwayError, request_id: str | None) -> bytes:
        """The in-band error event (and whatever else ends the stream honestly)."""


async def open_events(
    request: web.Request, targets: list[Target], opener: Callable[[Target], AsyncIterator[T]]
) -> tuple[AsyncIterator[T], T, Target]:
    """The first target's stream (`opener` opens one, under its guard) that produced its
    first item, with that item; failures another backend may not share fall over to the
    next target."""
    overall = request_deadline(targets)
    loop = asyncio.get_running_loop()
    for index, target in enumerate(targets):
        events = opener(target)
        try:
            try:
                first = await anext(events)
            except StopAsyncIteration:
                raise BackendUnavailable(
                    f"backend {target.guard.name!r} ended the stream before any event",
                    backend=target.guard.name,
                ) from None
        except BackendError as error:
            await events.aclose()  # type: ignore[attr-defined]
            reason = fallback_reason(error)
            if index + 1 == len(targets) or reason is None or loop.time() >= overall:
                raise
            note_fallback(request, targets, index, error, reason)
            continue
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        return events, first, target
    raise AssertionError("unreachable: targets is never empty")


async def relay_events(
    request: web.Request,
    events: Events,
    first: list[bytes],
    target: Target,
    state: EventState,
    *,
    started: float,
    on_first: Callable[[], object] | None = None,
) -> tuple[web.StreamResponse, TollwayError | None]:
    """Send the stream to the client, end it honestly, and note its outcome on the
    request's usage record; the response and the failure reported in-band, if any. The
    caller records the tokens (`state.usage`) and closes `events`."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Tollway-Model": target.name,
            "X-Tollway-Backend": target.guard.name,
        }
    )
    await response.prepare(request)
    request.app[metrics_key].time_to_first_token.labels(target.guard.name).observe(
        time.perf_counter() - started
    )
    if on_first is not None:
        on_first()
    client_gone = False
    with request.app[open_streams_key].track():
        failure, client_gone = await _relay(request, response, events, first, state)
        if failure is not None:
            _log.warning(
                "stream failed", extra={"backend": target.guard.name, "error": failure.code}
            )
            await write(response, state.error_frames(failure, request.get(request_id_key)))
        client_gone = not await end(response) or client_gone
    usage = request[usage_key]
    usage.outcome, usage.status = outcome(
        failure, ended=state.ended, client_gone=client_gone, failed=state.failed
    )
    return response, failure


async def _relay(
    request: web.Request,
    response: web.StreamResponse,
    events: Events,
    first: list[bytes],
    state: EventState,
) -> tuple[TollwayError | None, bool]:
    """Send events until the last one or the end: (the failure to report, client gone)."""
    batch = first
    frames: list[bytes] = []
    try:
        while True:
            for data in batch:
                frame = state.frame(data)
                if frame is not None:
                    frames.append(frame)
                if state.ended:
                    break
            if frames and not await write(response, b"".join(frames)):
                return None, True  # the client went away: closing `events` stops upstream
            frames = []
            if state.ended:
                return None, False
            batch = await anext(events)
    except StopAsyncIteration:
        if state.failed:
            return None, False  # the upstream's own error event already told the client
        if not state.complete:
            return BackendUnavailable(
                "the upstream ended the stream before the answer was complete"
            ), False
        state.ended = True
        await write(response, state.finish())
        return None, False
    except MalformedEvent as exc:
        if frames:
            await write(response, b"".join(frames))  # the good events before the bad one
        return BackendError(str(exc), code="malformed_event"), False
    except BackendError as error:
        return error, False
    except asyncio.CancelledError as exc:
        if not request.app[open_streams_key].is_shutdown(exc):
            raise
        return ShuttingDown("the server is shutting down; the answer was cut here"), False
