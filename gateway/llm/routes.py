"""OpenAI-compatible routes: chat completions (JSON and SSE), embeddings and models,
at ``/v1/...`` and again at ``/openai/v1/...`` where the Groq SDK calls.

The model named in the body picks the backend (`gateway.llm.model_router`); its fallbacks
are tried in order (`gateway.llm.targets`); streams are relayed by
`gateway.llm.chat_stream`. The answer names the model that served it in
``X-Tollway-Model``.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, TypeVar

import orjson
from aiohttp import web

from backends.base import JSONResponse
from gateway.cache.cached import cached
from gateway.cache.response_cache import cache_key, canonical_body, response_cache_key
from gateway.config import config_key
from gateway.edge.body import read_json
from gateway.edge.principal import principal_key
from gateway.errors import (
    BadRequest,
)
from gateway.llm.chat_stream import stream_chat
from gateway.llm.model_router import ModelRouter, Target
from gateway.llm.targets import call_context, first_that_answers
from gateway.llm.usage import record_usage, token_children_key, tokens_of
from gateway.ops.lifecycle import state_key
from gateway.resilience.registry import backends_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["llm_router_key", "routes", "setup"]

_log = logging.getLogger("tollway.llm")
T = TypeVar("T")

llm_router_key = web.AppKey("llm_router", ModelRouter)


def setup(app: web.Application) -> None:
    """Build the model router once the backends have started."""
    app[token_children_key] = {}

    async def build(app: web.Application) -> None:
        app[llm_router_key] = ModelRouter(app[config_key], app[backends_key])

    app.on_startup.append(build)


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
    targets = request.app[llm_router_key].targets(
        request[principal_key], body.get("model"), api="chat"
    )
    _checked_body(body, "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    parts = (targets[0].name, targets[0].guard.name, canonical_body(body))
    if stream:
        cache = request.app[response_cache_key]
        if not cache.enabled_for("chat"):
            return await stream_chat(request, body, targets, None)
        key = cache_key(request[principal_key].tenant, "chat", *parts)
        relay = partial(stream_chat, request, body, targets, key)
        return await cache.serve(request, "chat", key, relay, storable=lambda _: None)
    answer = partial(_json_answer, request, body, targets, "chat")
    return await cached(request, "chat", parts, answer)


async def _json_answer(
    request: web.Request, body: dict[str, Any], targets: list[Target], operation: str
) -> web.Response:
    """A non-streaming call (``chat`` or ``embeddings``) to the first target that answers.
    When the upstream knows the model by the name the client gave, the client's own bytes
    go upstream as they came: no second encoding of the body."""
    ctx = call_context(request)
    raw = await request.read()  # read already: aiohttp keeps the bytes

    async def call(target: Target) -> JSONResponse:
        method = getattr(target.guard.backend, operation)
        same = body.get("model") == target.upstream_model
        upstream = raw if same else {**body, "model": target.upstream_model}
        answer: JSONResponse = await method(upstream, ctx)
        return answer

    started = time.perf_counter()
    answer, target = await first_that_answers(request, targets, call)
    record_usage(request, target, time.perf_counter() - started, *tokens_of(answer.body))
    return _answer(answer, target)


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    targets = request.app[llm_router_key].targets(
        request[principal_key], body.get("model"), api="embeddings"
    )
    _checked_body(body, "input")
    parts = (targets[0].name, targets[0].guard.name, canonical_body(body))
    produce = partial(_json_answer, request, body, targets, "embeddings")
    return await cached(request, "embeddings", parts, produce)


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


_CONTENT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"type": ["string", "null", "array"], "items": _CONTENT_PART},
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
        "tool_calls": {"type": ["array", "null"], "items": {"type": "object"}},
    },
}
_CHAT_BODY = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "stream_options": {"type": ["object", "null"]},
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
