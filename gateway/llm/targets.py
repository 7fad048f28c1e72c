"""Which target answers: the model's primary first, then its fallbacks in order.

A failure passes to the next target when another model may not share it: after the
guard's retries for 429, 5xx, timeouts (a slow first token included), connection
failures, an open breaker or a full quota; at once, without a retry, for
``context_length_exceeded`` (the fallback usually has a larger window). Any other 4xx
(a content filter, a bad request) is the caller's own and goes back to them after
exactly one attempt.

Every attempt is made for the target's model, so it passes that model's own breaker.
All of a request's attempts, on every target, end by one deadline: the longest
`timeout_s` among its targets, from the start; each target's share of it is also
bounded by its own `timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Final, TypeVar

from aiohttp import web

from backends.base import CallContext
from gateway.edge.principal import principal_key
from gateway.edge.request_id import request_id_key
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    BadRequest,
    ResponseTooLarge,
    UpstreamHTTPError,
)
from gateway.llm.model_router import Target
from gateway.llm.sse_relay import carries_token
from gateway.ops.metrics import metrics_key
from gateway.resilience.retries import failure_reason

__all__ = [
    "call_context",
    "fallback_reason",
    "falls_over",
    "first_that_answers",
    "is_context_length",
    "note_fallback",
    "open_stream",
    "open_target_stream",
    "request_deadline",
    "start_stream",
    "target_deadline",
]

_log = logging.getLogger("tollway.llm")
T = TypeVar("T")

_CONTEXT_LENGTH: Final = re.compile(
    r"context[_ ]length[_ ]exceeded|maximum context length|context window"
    r"|reduce the length of the messages",
    re.IGNORECASE,
)


def call_context(request: web.Request) -> CallContext:
    return CallContext(request[request_id_key], request[principal_key].tenant)


def is_context_length(error: BackendError) -> bool:
    """Whether the upstream refused the prompt as longer than the model's window, as
    OpenAI and Groq say it (``code: context_length_exceeded``) or as servers that only
    say it in the message do (vLLM's "maximum context length is ...")."""
    if not isinstance(error, UpstreamHTTPError) or error.upstream_status not in (400, 413):
        return False
    if error.code == "context_length_exceeded":
        return True
    return error.upstream_status == 400 and bool(_CONTEXT_LENGTH.search(error.message))


def fallback_reason(error: BackendError) -> str | None:
    """Why another model may succeed where this one failed (the metric label), or None
    when the failure is the caller's own and must reach them (a 4xx, or an answer past
    ``max_response_bytes``: what was asked for is too big, not the backend unwell)."""
    if isinstance(error, UpstreamHTTPError):
        status = error.upstream_status
        if status < 500 and status not in (408, 409, 429):
            return "context_length" if is_context_length(error) else None
    if isinstance(error, ResponseTooLarge):
        return None
    return failure_reason(error)


def falls_over(error: BackendError) -> bool:
    """Whether another backend may succeed where this one failed."""
    return fallback_reason(error) is not None


def request_deadline(targets: list[Target]) -> float:
    """The loop time by which every attempt of a request, on any target, must be done."""
    longest = max(target.guard.config.timeout_s for target in targets)
    return asyncio.get_running_loop().time() + longest


def target_deadline(target: Target, overall: float) -> float:
    """A target's share of the request's deadline: at most its own timeout from now."""
    return min(overall, asyncio.get_running_loop().time() + target.guard.config.timeout_s)


def note_fallback(
    request: web.Request, targets: list[Target], index: int, error: BackendError, reason: str
) -> None:
    fallback = targets[index + 1]
    request.app[metrics_key].fallbacks.labels(targets[0].name, fallback.name, reason).inc()
    _log.warning(
        "falling back",
        extra={
            "model": targets[index].name,
            "fallback": fallback.name,
            "reason": reason,
            "error": error.code,
        },
    )


async def first_that_answers(
    request: web.Request,
    targets: list[Target],
    call: Callable[[Target], Awaitable[T]],
) -> tuple[T, Target]:
    """The answer of the first target that gives one, trying fallbacks in order."""
    overall = request_deadline(targets)
    loop = asyncio.get_running_loop()
    for index, target in enumerate(targets):
        try:
            answer = await target.guard.call(
                partial(call, target),
                deadline=target_deadline(target, overall),
                model=target.upstream_model,
            )
        except BackendError as error:
            reason = fallback_reason(error)
            if index + 1 == len(targets) or reason is None or loop.time() >= overall:
                raise
            note_fallback(request, targets, index, error, reason)
            continue
        return answer, target
    raise AssertionError("unreachable: targets is never empty")


def upstream_stream_options(body: dict[str, Any]) -> dict[str, Any]:
    """The client's ``stream_options`` with usage asked for, so tokens are counted; the
    extra chunk is taken out again before a client that did not ask sees it."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    return {**(options or {}), "include_usage": True}


async def open_target_stream(
    target: Target, upstream_body: dict[str, Any], ctx: CallContext, deadline: float
) -> tuple[AsyncIterator[list[bytes]], list[bytes]]:
    """`target`'s stream for `upstream_body` once its first token came (retried like any
    call before that, failed over past `first_token_timeout_s`), with the events up to
    it. Close the stream with `aclose()`."""
    backend = target.guard.backend
    events: AsyncIterator[list[bytes]] = target.guard.stream(
        partial(backend.chat_stream, upstream_body, ctx),
        first_item_timeout_s=backend.first_token_timeout_s,
        deadline=deadline,
        model=target.upstream_model,
        ready=carries_token,
    )
    try:
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise BackendUnavailable(
                f"backend {target.guard.name!r} ended the stream before any event",
                backend=target.guard.name,
            ) from None
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise
    return events, first


async def start_stream(
    request: web.Request, body: dict[str, Any], targets: list[Target], overall: float
) -> tuple[AsyncIterator[list[bytes]], list[bytes], int]:
    """The first target's stream that produced its first events, those events, and the
    target's index."""
    ctx = call_context(request)
    options = upstream_stream_options(body)
    loop = asyncio.get_running_loop()
    for index, target in enumerate(targets):
        upstream_body = {**body, "model": target.upstream_model, "stream_options": options}
        try:
            events, first = await open_target_stream(
                target, upstream_body, ctx, target_deadline(target, overall)
            )
        except BackendError as error:
            reason = fallback_reason(error)
            if index + 1 == len(targets) or reason is None or loop.time() >= overall:
                raise
            note_fallback(request, targets, index, error, reason)
            continue
        return events, first, index
    raise AssertionError("unreachable: targets is never empty")


async def open_stream(
    request: web.Request, body: dict[str, Any], targets: list[Target]
) -> tuple[AsyncIterator[list[bytes]], list[bytes], Target]:
    """The first target's stream that produced its first events, with those events."""
    events, first, index = await start_stream(request, body, targets, request_deadline(targets))
    return events, first, targets[index]
