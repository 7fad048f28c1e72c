"""Which target answers: the model's primary first, then its fallbacks in order, when the
failure is one another backend may not share (5xx, timeout, open breaker, quota), never
for the caller's own mistakes (4xx)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from aiohttp import web

from backends.base import CallContext
from gateway.edge.principal import principal_key
from gateway.edge.request_id import request_id_key
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    BadRequest,
    OutboundLimited,
    UpstreamHTTPError,
)
from gateway.llm.model_router import Target
from gateway.ops.metrics import metrics_key

__all__ = ["call_context", "falls_over", "first_that_answers", "open_stream"]

_log = logging.getLogger("tollway.llm")
T = TypeVar("T")


def call_context(request: web.Request) -> CallContext:
    return CallContext(request[request_id_key], request[principal_key].tenant)


def falls_over(error: BackendError) -> bool:
    """Whether another backend may succeed where this one failed."""
    if isinstance(error, UpstreamHTTPError):
        return error.upstream_status == 429 or error.upstream_status >= 500
    return error.breaker_failure or isinstance(error, BackendUnavailable | OutboundLimited)


async def first_that_answers(
    request: web.Request,
    targets: list[Target],
    call: Callable[[Target], Awaitable[T]],
) -> tuple[T, Target]:
    """The answer of the first target that gives one, trying fallbacks in order."""
    metrics = request.app[metrics_key]
    for index, target in enumerate(targets):
        try:
            return await target.guard.call(partial(call, target)), target
        except BackendError as error:
            if index + 1 == len(targets) or not falls_over(error):
                raise
            fallback = targets[index + 1]
            metrics.fallbacks.labels(targets[0].name, fallback.name).inc()
            _log.warning(
                "falling back",
                extra={"model": target.name, "fallback": fallback.name, "error": error.code},
            )
    raise AssertionError("unreachable: targets is never empty")


async def open_stream(
    request: web.Request, body: dict[str, Any], targets: list[Target]
) -> tuple[AsyncIterator[list[bytes]], list[bytes], Target]:
    """The first target's stream that produced its first events, with those events."""
    ctx = call_context(request)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    # Ask for usage even when the client did not, so tokens are counted; the extra
    # chunk is taken out again before the client sees it.
    upstream_options = {**(options or {}), "include_usage": True}
    metrics = request.app[metrics_key]
    for index, target in enumerate(targets):
        backend = target.guard.backend
        upstream_body = {**body, "model": target.upstream_model, "stream_options": upstream_options}
        events: AsyncIterator[list[bytes]] = target.guard.stream(
            partial(backend.chat_stream, upstream_body, ctx),
            first_item_timeout_s=backend.first_token_timeout_s,
        )
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
            if index + 1 == len(targets) or not falls_over(error):
                raise
            metrics.fallbacks.labels(targets[0].name, targets[index + 1].name).inc()
            _log.warning(
                "falling back",
                extra={"model": target.name, "fallback": targets[index + 1].name},
            )
            continue
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        return events, first, target
    raise AssertionError("unreachable: targets is never empty")
