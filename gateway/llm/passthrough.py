"""Legacy completions (JSON and stream), moderations and image generation: relayed to the
model's backend with the same routing, limits, budgets and breakers as chat, and the
usage the provider reports (images: their count and size).

Moderations may omit ``model``: the first configured model serving moderations that the
key may use answers. Images are relayed as they arrive (their answers run to megabytes of
base64) and are never cached.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from functools import partial
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.cache.cached import cached
from gateway.cache.response_cache import canonical_body
from gateway.edge.body import read_json
from gateway.edge.principal import principal_key
from gateway.errors import BadRequest
from gateway.llm.api_usage import (
    TokenUsage,
    last_object,
    record_images,
    record_tokens,
    tokens_of_usage,
)
from gateway.llm.byte_relay import json_answer, relay_bytes
from gateway.llm.completions_stream import CompletionsState
from gateway.llm.event_relay import open_events, relay_events
from gateway.llm.model_router import Target
from gateway.llm.routes import llm_router_key
from gateway.llm.stream_io import DRAIN_S, drain
from gateway.llm.targets import call_context, first_that_answers
from gateway.ops.request_usage import usage_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["json_call", "routes"]

_TAIL_BYTES: Final = 64 * 1024
"""How much of an image answer's end is kept to read its usage (which follows the data)."""


async def json_call(
    request: web.Request, body: dict[str, Any], targets: list[Target], path: str
) -> tuple[dict[str, Any], web.Response]:
    """POST `body` to `path` on the first target that answers; its parsed answer and the
    response to send. Tokens are recorded."""
    ctx = call_context(request)

    async def call(target: Target) -> Any:
        upstream = {**body, "model": target.upstream_model}
        return await target.guard.backend.call_json("POST", path, ctx, body=upstream)

    started = time.perf_counter()
    answer, target = await first_that_answers(request, targets, call)
    try:
        parsed = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        parsed = None
    parsed = parsed if isinstance(parsed, dict) else {}
    record_tokens(
        request, target, time.perf_counter() - started, tokens_of_usage(parsed.get("usage"))
    )
    return parsed, json_answer(answer, target)


# --- legacy completions -----------------------------------------------------------------


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    principal = request[principal_key]
    targets = request.app[llm_router_key].targets(principal, body.get("model"), api="completions")
    prompt = body.get("prompt")
    if "prompt" not in body or not isinstance(prompt, str | list | None):
        raise BadRequest("'prompt' must be a string or an array", param="prompt")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    if stream:
        return await _stream_completions(request, body, targets)

    async def produce() -> web.StreamResponse:
        return (await json_call(request, body, targets, "/completions"))[1]

    parts = (targets[0].name, targets[0].guard.name, canonical_body(body))
    return await cached(request, "completions", parts, produce)


async def _stream_completions(
    request: web.Request, body: dict[str, Any], targets: list[Target]
) -> web.StreamResponse:
    started = time.perf_counter()
    ctx = call_context(request)
    options = body.get("stream_options") or {}
    asked = options.get("include_usage") is True
    upstream_options = {**options, "include_usage": True}

    def opener(target: Target) -> Any:
        backend = target.guard.backend
        upstream = {**body, "model": target.upstream_model, "stream_options": upstream_options}
        return target.guard.stream(
            partial(backend.event_stream, "/completions", upstream, ctx),
            first_item_timeout_s=backend.first_token_timeout_s,
            model=target.upstream_model,
        )

    events, first, target = await open_events(request, targets, opener)
    state = CompletionsState(strip_usage=not asked)
    async with aclosing(events):  # type: ignore[type-var]
        response, failure = await relay_events(
            request, events, first, target, state, started=started
        )
        record_tokens(request, target, time.perf_counter() - started, state.usage)
        if state.ended and failure is None:
            await drain(events, getattr(target.guard.backend, "done_drain_s", DRAIN_S))
    return response


# --- moderations ------------------------------------------------------------------------


async def moderations(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    value = body.get("input")
    if value is None or value == "" or value == [] or not isinstance(value, str | list):
        raise BadRequest("'input' must be a string or a non-empty array", param="input")
    router = request.app[llm_router_key]
    principal = request[principal_key]
    router.require_served("moderations")
    model = body.get("model")
    if model is None:
        model = router.first_serving(principal, "moderations")
        if model is None:
            raise BadRequest(
                "'model' is required: no moderation model is configured", param="model"
            )
    targets = router.targets(principal, model, api="moderations")

    async def produce() -> web.StreamResponse:
        parsed, response = await json_call(
            request, {**body, "model": model}, targets, "/moderations"
        )
        results = parsed.get("results")
        request[usage_key].rows = len(results) if isinstance(results, list) else 0
        return response

    parts = (targets[0].name, targets[0].guard.name, canonical_body({**body, "model": model}))
    return await cached(request, "moderations", parts, produce)


# --- images -----------------------------------------------------------------------------


async def generate_images(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", param="prompt")
    count = body.get("n", 1) if body.get("n") is not None else 1
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10:
        raise BadRequest("'n' must be a whole number from 1 to 10", param="n")
    size = body.get("size")
    if size is not None and not isinstance(size, str):
        raise BadRequest("'size' must be a string such as 1024x1024", param="size")
    if body.get("stream"):
        raise BadRequest(
            "streamed image generation is not relayed here; leave 'stream' unset",
            code="unsupported_parameter",
            param="stream",
        )
    router = request.app[llm_router_key]
    router.require_served("images")
    model = body.get("model")
    if model is None:
        model = router.first_serving(request[principal_key], "images")
        if model is None:
            raise BadRequest("'model' is required: no image model is configured", param="model")
    targets = router.targets(request[principal_key], model, api="images")
    ctx = call_context(request)

    def opener(target: Target) -> Any:
        upstream = orjson.dumps({**body, "model": target.upstream_model})
        relay = target.guard.backend.relay
        return target.guard.stream(
            partial(
                relay, "/images/generations", ctx, body=upstream,
                content_type="application/json", idle_timeout=False,
            ),
            first_item_timeout_s=target.guard.config.timeout_s,
            model=target.upstream_model,
        )  # fmt: skip

    started = time.perf_counter()
    items, head, target = await open_events(request, targets, opener)
    async with aclosing(items):  # type: ignore[type-var]
        relayed = await relay_bytes(request, items, head, target, keep_tail=_TAIL_BYTES)
    found = last_object(relayed.tail, b"usage") if relayed.complete else None
    usage = tokens_of_usage(found) if found else TokenUsage()
    record_tokens(request, target, time.perf_counter() - started, usage)
    if relayed.complete:
        record_images(request, target, count, size or "auto")
    return relayed.response


_COMPLETIONS_BODY: Final = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": {"type": "string"},
        "prompt": {"type": ["string", "array", "null"]},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"]},
        "max_tokens": {"type": ["integer", "null"]},
        "n": {"type": ["integer", "null"]},
    },
}
_MODERATIONS_BODY: Final = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": {"type": ["string", "null"]},
        "input": {"type": ["string", "array"]},
    },
}
_IMAGES_BODY: Final = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string"},
        "model": {"type": ["string", "null"]},
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 10},
        "size": {"type": ["string", "null"]},
        "quality": {"type": ["string", "null"]},
        "response_format": {"type": ["string", "null"]},
        "stream": {"type": ["boolean", "null"]},
    },
}


def routes() -> list[RouteDef]:
    found: list[RouteDef] = []
    for prefix in ("/v1", "/openai/v1"):
        found += [
            RouteDef(
                "POST",
                f"{prefix}/completions",
                completions,
                RouteSpec(
                    "completions",
                    "llm",
                    True,
                    "Legacy text completion (JSON, or SSE with stream)",
                    request_body=_COMPLETIONS_BODY,
                ),
            ),
            RouteDef(
                "POST",
                f"{prefix}/moderations",
                moderations,
                RouteSpec(
                    "moderations",
                    "llm",
                    True,
                    "Classify text (and images) for harm",
                    request_body=_MODERATIONS_BODY,
                ),
            ),  # fmt: skip
            RouteDef(
                "POST",
                f"{prefix}/images/generations",
                generate_images,
                RouteSpec(
                    "images",
                    "llm",
                    True,
                    "Generate images from a prompt",
                    request_body=_IMAGES_BODY,
                ),
            ),  # fmt: skip
        ]
    return found
