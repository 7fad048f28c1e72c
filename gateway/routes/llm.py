"""OpenAI-compatible routes: chat completions (JSON and SSE), embeddings and models,
at ``/v1/...`` and again at ``/openai/v1/...`` where the Groq SDK calls.

The model named in the body picks the backend (`gateway.model_router`); its fallbacks
are tried in order when it fails in a way another backend may not (5xx, timeout, open
breaker, quota), never for the caller's own mistakes (4xx). The answer names the model
that served it in ``X-Tollway-Model``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any, TypeVar

import orjson
from aiohttp import web

from backends.base import CallContext, JSONResponse
from gateway.appkeys import (
    config_key,
    metrics_key,
    principal_key,
    request_id_key,
    response_cache_key,
    state_key,
    usage_key,
)
from gateway.body import read_json
from gateway.cache import CacheEntry, cache_key, canonical_body
from gateway.caching import cached
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    BadRequest,
    OutboundLimited,
    UpstreamHTTPError,
)
from gateway.model_router import ModelRouter, Target
from gateway.registry import backends_key
from gateway.routing import RouteDef, RouteSpec
from gateway.sse_relay import DONE_FRAME, MalformedEvent, StreamState, error_frame

__all__ = ["llm_router_key", "routes", "setup"]

_log = logging.getLogger("tollway.llm")
T = TypeVar("T")

llm_router_key = web.AppKey("llm_router", ModelRouter)

_DRAIN_AFTER_DONE_S = 0.5
"""How long to wait for the upstream to close after ``[DONE]`` before closing it, for a
backend without its own ``done_drain_s``."""


_TokenChildren = dict[tuple[str, str], tuple[Any, Any]]
token_children_key = web.AppKey("llm_token_children", _TokenChildren)
"""The tokens counter's (in, out) children by (key id, model): `labels()` takes a lock and
builds its key on every call, which showed in profiles of the hot path."""


def setup(app: web.Application) -> None:
    """Build the model router once the backends have started."""
    app[token_children_key] = {}

    async def build(app: web.Application) -> None:
        app[llm_router_key] = ModelRouter(app[config_key], app[backends_key])

    app.on_startup.append(build)


def _context(request: web.Request) -> CallContext:
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


def _record(
    request: web.Request, target: Target, upstream_s: float, tokens_in: int, tokens_out: int
) -> None:
    usage = request[usage_key]
    usage.upstream_s += upstream_s
    usage.backend = target.guard.name
    usage.model = target.name
    usage.tokens_in += tokens_in
    usage.tokens_out += tokens_out
    if tokens_in or tokens_out:
        key = (request[principal_key].key_id, target.name)
        children = request.app[token_children_key]
        pair = children.get(key)
        if pair is None:
            counter = request.app[metrics_key].tokens
            pair = children[key] = (counter.labels(*key, "in"), counter.labels(*key, "out"))
        pair[0].inc(tokens_in)
        pair[1].inc(tokens_out)


def _tokens_of(body: bytes) -> tuple[int, int]:
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return 0, 0
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if completion is None and isinstance(usage.get("total_tokens"), int):
        completion = usage["total_tokens"] - (prompt if isinstance(prompt, int) else 0)
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _answer(answer: JSONResponse, target: Target) -> web.Response:
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type="application/json",
        headers={
            **answer.headers,
            "X-Tollway-Model": target.name,
            "X-Tollway-Backend": target.guard.name,
        },
    )


def _checked_body(body: dict[str, Any], required_list: str) -> None:
    value = body.get(required_list)
    if required_list == "messages" and (not isinstance(value, list) or not value):
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    if required_list == "input" and (value is None or value == "" or value == []):
        raise BadRequest("'input' must be a string or a non-empty array", param="input")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    targets = request.app[llm_router_key].targets(request[principal_key], body.get("model"))
    _checked_body(body, "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    parts = (targets[0].name, targets[0].guard.name, canonical_body(body))
    if stream:
        cache = request.app[response_cache_key]
        if not cache.enabled_for("chat"):
            return await _stream_chat(request, body, targets, None)
        key = cache_key(request[principal_key].tenant, "chat", *parts)
        relay = partial(_stream_chat, request, body, targets, key)
        return await cache.serve(request, "chat", key, relay, storable=lambda _: None)
    answer = partial(_json_answer, request, body, targets, "chat")
    return await cached(request, "chat", parts, answer)


async def _json_answer(
    request: web.Request, body: dict[str, Any], targets: list[Target], operation: str
) -> web.Response:
    """A non-streaming call (``chat`` or ``embeddings``) to the first target that answers."""
    ctx = _context(request)

    async def call(target: Target) -> JSONResponse:
        method = getattr(target.guard.backend, operation)
        answer: JSONResponse = await method({**body, "model": target.upstream_model}, ctx)
        return answer

    started = time.perf_counter()
    answer, target = await first_that_answers(request, targets, call)
    _record(request, target, time.perf_counter() - started, *_tokens_of(answer.body))
    return _answer(answer, target)


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    targets = request.app[llm_router_key].targets(request[principal_key], body.get("model"))
    _checked_body(body, "input")
    parts = (targets[0].name, targets[0].guard.name, canonical_body(body))
    produce = partial(_json_answer, request, body, targets, "embeddings")
    return await cached(request, "embeddings", parts, produce)


async def _open_stream(
    request: web.Request, body: dict[str, Any], targets: list[Target]
) -> tuple[AsyncIterator[list[bytes]], list[bytes], Target]:
    """The first target's stream that produced its first events, with those events."""
    ctx = _context(request)
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


async def _stream_chat(
    request: web.Request, body: dict[str, Any], targets: list[Target], cache_as: str | None
) -> web.StreamResponse:
    """Relay the stream; with `cache_as`, store it once it completed (``[DONE]`` after a
    finish reason, no failure) so a later identical request replays it."""
    started = time.perf_counter()
    options = body.get("stream_options")
    client_asked_usage = isinstance(options, dict) and options.get("include_usage") is True
    events, first, target = await _open_stream(request, body, targets)
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
        failure = await _relay(response, events, first, state, sent)
        if failure is not None:
            _log.warning(
                "stream failed", extra={"backend": target.guard.name, "error": failure.code}
            )
            await _write(response, error_frame(failure, request.get(request_id_key)))
        await _end(response)  # the client has its whole answer now
        if state.done:
            await _drain(events, getattr(target.guard.backend, "done_drain_s", _DRAIN_AFTER_DONE_S))
    _record(request, target, time.perf_counter() - started, *state.tokens())
    if cache_as is not None and sent is not None and failure is None:
        if state.finished and state.done:
            entry = CacheEntry(200, "text/event-stream", b"".join(sent), time.time())
            await request.app[response_cache_key].store(cache_as, entry)
    return response


async def _relay(
    response: web.StreamResponse,
    events: AsyncIterator[list[bytes]],
    first: list[bytes],
    state: StreamState,
    sent: list[bytes] | None,
) -> BackendError | None:
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


async def _end(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionResetError:
        pass


async def list_models(request: web.Request) -> web.Response:
    router = request.app[llm_router_key]
    config = request.app[config_key]
    created = int(request.app[state_key].started_at)
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": config.models[name].backend,
        }
        for name in router.listed(request[principal_key])
    ]
    return web.json_response({"object": "list", "data": data}, dumps=_dumps)


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    target = request.app[llm_router_key].targets(request[principal_key], name)[0]
    return web.json_response(
        {
            "id": name,
            "object": "model",
            "created": int(request.app[state_key].started_at),
            "owned_by": target.guard.name,
        },
        dumps=_dumps,
    )


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


_CHAT_BODY = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object"},
    },
}
_EMBEDDINGS_BODY = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {"model": {"type": "string"}, "input": {}},
}


def routes() -> list[RouteDef]:
    found: list[RouteDef] = []
    for prefix in ("/v1", "/openai/v1"):
        found += [
            RouteDef(
                "POST",
                f"{prefix}/chat/completions",
                chat_completions,
                RouteSpec(
                    "chat",
                    "llm",
                    True,
                    "Chat completion (JSON, or SSE with stream)",
                    request_body=_CHAT_BODY,
                ),
            ),
            RouteDef(
                "POST",
                f"{prefix}/embeddings",
                embeddings,
                RouteSpec("embeddings", "llm", True, "Embeddings", request_body=_EMBEDDINGS_BODY),
            ),
            RouteDef(
                "GET",
                f"{prefix}/models",
                list_models,
                RouteSpec("models", "llm", True, "The models this key may use"),
            ),
            RouteDef(
                "GET",
                f"{prefix}/models/{{model:.+}}",
                get_model,
                RouteSpec("models", "llm", True, "One model this key may use"),
            ),
        ]
    return found
