"""The OpenAI Responses API: ``POST /v1/responses`` (JSON, or its event stream), and the
stored responses behind ``/v1/responses/{id}`` (retrieve, delete, cancel, input items),
at ``/v1`` and ``/openai/v1``.

Routing, allow-lists, fallbacks (only to backends serving the Responses API), limits,
budgets and breakers work as for chat. Stored responses are tenant-bound
(`gateway.llm.responses_store`): an id, a ``previous_response_id`` or a
``prompt_cache_options.comparison_response_id`` that the caller's tenant did not create
answers 404, and a request continuing a stored response goes only to the backend that
holds it. ``conversation`` ids come from the Conversations API, which Tollway does not
relay: no tenant can own one here, so every ``conversation`` answers 404 (fail closed).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from functools import partial
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.cache.cached import cached
from gateway.cache.response_cache import canonical_body, response_cache_key
from gateway.edge.body import read_json
from gateway.edge.principal import principal_key
from gateway.errors import BackendUnavailable, BadRequest, NotFound
from gateway.llm.api_usage import record_tokens, tokens_of_usage
from gateway.llm.byte_relay import json_answer
from gateway.llm.event_relay import open_events, relay_events
from gateway.llm.model_router import Target
from gateway.llm.responses_store import ResponseOwner, response_owners_key
from gateway.llm.responses_stream import ResponsesState
from gateway.llm.routes import llm_router_key
from gateway.llm.stream_io import DRAIN_S, drain
from gateway.llm.targets import call_context, first_that_answers
from gateway.llm.usage import record_usage
from gateway.ops.metrics import metrics_key
from gateway.ops.tasks import tasks_key
from gateway.resilience.registry import backends_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes"]

_RETRIEVE_PARAMS: Final = frozenset(
    {"include", "include[]", "include_obfuscation", "starting_after", "stream"}
)
_ITEMS_PARAMS: Final = frozenset({"after", "before", "include", "include[]", "limit", "order"})


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false", param=name)
    return value


def _check_body(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is not None and not isinstance(value, str | list):
        raise BadRequest("'input' must be a string or an array of input items", param="input")
    for name in ("stream", "store", "background"):
        _flag(body, name)
    if body.get("previous_response_id") is not None and body.get("conversation") is not None:
        raise BadRequest(
            "'previous_response_id' and 'conversation' cannot be used together",
            param="conversation",
        )


async def _pinned_backend(request: web.Request, body: dict[str, Any]) -> str | None:
    """The backend holding the stored response this request continues, if any: 404 for
    ids the caller's tenant does not own."""
    owners = request.app[response_owners_key]
    tenant = request[principal_key].tenant
    conversation = body.get("conversation")
    if conversation is not None:
        shown = conversation.get("id") if isinstance(conversation, dict) else conversation
        request.app[metrics_key].response_id_refusals.labels("unknown").inc()
        raise NotFound(
            f"Conversation with id '{str(shown)[:128]}' not found.",
            code="conversation_not_found",
            param="conversation",
        )
    pinned: str | None = None
    if body.get("previous_response_id") is not None:
        owner = await owners.owned(
            body["previous_response_id"], tenant, param="previous_response_id"
        )
        pinned = owner.backend
    options = body.get("prompt_cache_options")
    if isinstance(options, dict) and options.get("comparison_response_id") is not None:
        param = "prompt_cache_options.comparison_response_id"
        owner = await owners.owned(options["comparison_response_id"], tenant, param=param)
        if pinned is not None and owner.backend != pinned:
            raise BadRequest("the response ids given are held by different backends", param=param)
        pinned = owner.backend
    return pinned


async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _check_body(body)
    principal = request[principal_key]
    targets = request.app[llm_router_key].targets(principal, body.get("model"), api="responses")
    pinned = await _pinned_backend(request, body)
    if pinned is not None:
        # a stored response exists only where it was made: no fallback elsewhere
        targets = [t for t in targets if t.guard.name == pinned]
        if not targets:
            raise BadRequest(
                f"the model {body['model']!r} is not served by the backend that holds "
                "the previous response",
                code="previous_response_elsewhere",
                param="model",
            )
    if body.get("stream"):
        return await _stream(request, body, targets)
    produce = partial(_json, request, body, targets)
    cache = request.app[response_cache_key]
    if not cache.enabled_for("responses"):
        return await produce()
    if body.get("store") is not False or body.get("background"):
        response = await produce()  # a stored answer is a new object each time
        response.headers["X-Cache"] = "BYPASS"
        return response
    parts = (targets[0].name, targets[0].guard.name, canonical_body(body))
    return await cached(request, "responses", parts, produce)


def _stores(body: dict[str, Any]) -> bool:
    return body.get("store") is not False


async def _json(
    request: web.Request, body: dict[str, Any], targets: list[Target]
) -> web.StreamResponse:
    ctx = call_context(request)

    async def call(target: Target) -> Any:
        upstream = {**body, "model": target.upstream_model}
        return await target.guard.backend.call_json("POST", "/responses", ctx, body=upstream)

    started = time.perf_counter()
    answer, target = await first_that_answers(request, targets, call)
    try:
        parsed = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        parsed = None
    parsed = parsed if isinstance(parsed, dict) else {}
    response_id = parsed.get("id")
    if _stores(body) and isinstance(response_id, str):
        await _record_owner(request, response_id, target)
    record_tokens(
        request, target, time.perf_counter() - started, tokens_of_usage(parsed.get("usage"))
    )
    return json_answer(answer, target)


async def _record_owner(request: web.Request, response_id: str, target: Target) -> None:
    principal = request[principal_key]
    await request.app[response_owners_key].record(
        response_id,
        tenant=principal.tenant,
        key_id=principal.key_id,
        backend=target.guard.name,
        model=target.name,
    )


async def _stream(
    request: web.Request, body: dict[str, Any], targets: list[Target]
) -> web.StreamResponse:
    started = time.perf_counter()
    ctx = call_context(request)

    def opener(target: Target) -> Any:
        backend = target.guard.backend
        upstream = {**body, "model": target.upstream_model}
        return target.guard.stream(
            partial(backend.event_stream, "/responses", upstream, ctx),
            first_item_timeout_s=backend.first_token_timeout_s,
            model=target.upstream_model,
        )

    events, first, target = await open_events(request, targets, opener)
    recording: list[asyncio.Task[None]] = []

    def created(response: dict[str, Any]) -> None:
        response_id = response.get("id")
        if _stores(body) and isinstance(response_id, str):
            task = request.app[tasks_key].start(
                _record_owner(request, response_id, target), name="record-response-owner"
            )
            recording.append(task)

    return await _relay(request, events, first, target, ResponsesState(created), started, recording)


async def _relay(
    request: web.Request,
    events: Any,
    first: list[bytes],
    target: Target,
    state: ResponsesState,
    started: float,
    recording: list[asyncio.Task[None]] | None = None,
) -> web.StreamResponse:
    async with aclosing(events):
        response, failure = await relay_events(
            request, events, first, target, state, started=started
        )
        record_tokens(request, target, time.perf_counter() - started, state.usage)
        if state.ended and failure is None:
            await drain(events, getattr(target.guard.backend, "done_drain_s", DRAIN_S))
    if recording:
        await asyncio.gather(*recording, return_exceptions=True)
    return response


# --- stored responses -------------------------------------------------------------------


async def _owned(request: web.Request) -> tuple[str, ResponseOwner, Target]:
    response_id = request.match_info["response_id"]
    owner = await request.app[response_owners_key].owned(response_id, request[principal_key].tenant)
    try:
        guard = request.app[backends_key].get(owner.backend)
    except NotFound:
        raise BackendUnavailable(
            "the backend that holds this response is no longer configured",
            code="backend_not_found",
        ) from None
    target = Target(owner.model or owner.backend, "", guard)
    record_usage(request, target, 0.0, 0, 0)
    return response_id, owner, target


def _params(request: web.Request, allowed: frozenset[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query.items() if k in allowed]


async def _stored_call(
    request: web.Request, target: Target, method: str, path: str, params: list[tuple[str, str]]
) -> web.Response:
    ctx = call_context(request)
    call = partial(target.guard.backend.call_json, method, path, ctx, params=params)
    answer = await target.guard.call(call, model=target.upstream_model)
    return json_answer(answer, target)


async def retrieve_response(request: web.Request) -> web.StreamResponse:
    response_id, _owner, target = await _owned(request)
    params = _params(request, _RETRIEVE_PARAMS)
    path = f"/responses/{response_id}"
    if request.query.get("stream", "").lower() not in ("true", "1"):
        return await _stored_call(request, target, "GET", path, params)
    started = time.perf_counter()
    ctx = call_context(request)
    backend = target.guard.backend
    events, first, target = await open_events(
        request,
        [target],
        lambda t: t.guard.stream(
            partial(backend.event_stream, path, None, ctx, method="GET", params=params),
            first_item_timeout_s=backend.first_token_timeout_s,
            model=target.upstream_model,
        ),
    )
    return await _relay(request, events, first, target, ResponsesState(), started)


async def delete_response(request: web.Request) -> web.StreamResponse:
    response_id, _owner, target = await _owned(request)
    answer = await _stored_call(request, target, "DELETE", f"/responses/{response_id}", [])
    await request.app[response_owners_key].forget(response_id)
    return answer


async def cancel_response(request: web.Request) -> web.StreamResponse:
    response_id, _owner, target = await _owned(request)
    return await _stored_call(request, target, "POST", f"/responses/{response_id}/cancel", [])


async def list_input_items(request: web.Request) -> web.StreamResponse:
    response_id, _owner, target = await _owned(request)
    path = f"/responses/{response_id}/input_items"
    return await _stored_call(request, target, "GET", path, _params(request, _ITEMS_PARAMS))


_OPTIONAL_ID = {"type": ["string", "null"]}
RESPONSES_BODY: Final = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "input": {"type": ["string", "array", "null"]},
        "instructions": {"type": ["string", "null"]},
        "stream": {"type": ["boolean", "null"]},
        "store": {"type": ["boolean", "null"]},
        "background": {"type": ["boolean", "null"]},
        "previous_response_id": _OPTIONAL_ID,
        "conversation": {"type": ["string", "object", "null"]},
        "max_output_tokens": {"type": ["integer", "null"]},
        "metadata": {"type": ["object", "null"]},
        "tools": {"type": ["array", "null"]},
        "stream_options": {"type": ["object", "null"]},
        "prompt_cache_options": {"type": ["object", "null"]},
    },
}


def routes() -> list[RouteDef]:
    found: list[RouteDef] = []
    for prefix in ("/v1", "/openai/v1"):
        one = f"{prefix}/responses/{{response_id}}"
        found += [
            RouteDef(
                "POST",
                f"{prefix}/responses",
                create_response,
                RouteSpec(
                    "responses",
                    "llm",
                    True,
                    "Create a model response (JSON, or its event stream with stream)",
                    request_body=RESPONSES_BODY,
                ),
            ),
            RouteDef(
                "GET",
                one,
                retrieve_response,
                RouteSpec("responses", "llm", True, "A stored response this tenant created"),
            ),
            RouteDef(
                "DELETE",
                one,
                delete_response,
                RouteSpec("responses", "llm", True, "Delete a stored response of this tenant"),
            ),
            RouteDef(
                "POST",
                f"{one}/cancel",
                cancel_response,
                RouteSpec("responses", "llm", True, "Cancel a background response"),
            ),
            RouteDef(
                "GET",
                f"{one}/input_items",
                list_input_items,
                RouteSpec("responses", "llm", True, "The input items of a stored response"),
            ),
        ]
    return found
