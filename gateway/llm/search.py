"""Tavily-compatible web search and extract: Tavily's request and answer shapes, so the
Tavily SDKs work with ``api_base_url`` at Tollway. Errors carry Tavily's
``detail.error`` beside the one error shape (see `gateway.edge.error_answers`)."""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web

from backends.base import CallContext, JSONResponse
from gateway.cache.cached import cached
from gateway.cache.response_cache import canonical_body
from gateway.config import config_key
from gateway.edge.body import read_json
from gateway.edge.principal import principal_key
from gateway.edge.request_id import request_id_key
from gateway.errors import BadRequest, NotConfigured, NotFound
from gateway.ops.request_usage import usage_key
from gateway.resilience.guard import Guard
from gateway.resilience.registry import backends_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes"]

MAX_EXTRACT_URLS = 20


def _search_backend(request: web.Request) -> Guard[Any]:
    """The configured search backend: the one named ``tavily``, else the only one."""
    registry = request.app[backends_key]
    found = registry.of_kind("search")
    if not found:
        hint = request.app[config_key].unconfigured.get("search")
        if hint:
            raise NotConfigured(f"no search provider is configured: {hint}")
        raise NotFound("no search backend is configured", code="backend_not_found")
    for guard in found:
        if guard.name == "tavily":
            return guard
    return found[0]


def _check_search(body: dict[str, Any]) -> None:
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("'query' must be a non-empty string", param="query")
    max_results = body.get("max_results")
    if max_results is not None and (
        isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 0
    ):
        raise BadRequest("'max_results' must be a non-negative integer", param="max_results")


def _check_extract(body: dict[str, Any]) -> None:
    urls = body.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise BadRequest("'urls' must be a URL or a non-empty array of URLs", param="urls")
    if len(urls) > MAX_EXTRACT_URLS:
        raise BadRequest(f"'urls' may hold at most {MAX_EXTRACT_URLS} URLs", param="urls")
    if not all(u.startswith(("http://", "https://")) for u in urls):
        raise BadRequest("every URL in 'urls' must be http or https", param="urls")


async def _proxy(request: web.Request, operation: str) -> web.StreamResponse:
    body = await read_json(request)
    (_check_search if operation == "search" else _check_extract)(body)
    guard = _search_backend(request)
    parts = (guard.name, operation, canonical_body(body))
    return await cached(request, "search", parts, partial(_answer, request, operation, body, guard))


async def _answer(
    request: web.Request, operation: str, body: dict[str, Any], guard: Guard[Any]
) -> web.Response:
    ctx = CallContext(request[request_id_key], request[principal_key].tenant)
    call = getattr(guard.backend, operation)

    async def once() -> JSONResponse:
        answer: JSONResponse = await call(body, ctx)
        return answer

    answer = await guard.call(once)
    usage = request[usage_key]
    usage.backend = guard.name
    usage.model = operation
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type="application/json",
        headers={"X-Tollway-Backend": guard.name},
    )


async def search(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "search")


async def extract(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "extract")


_SEARCH_BODY = {
    "type": "object",
    "required": ["query"],
    "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
}
_EXTRACT_BODY = {
    "type": "object",
    "required": ["urls"],
    "properties": {"urls": {"oneOf": [{"type": "string"}, {"type": "array"}]}},
}


def routes() -> list[RouteDef]:
    return [
        RouteDef(
            "POST",
            "/v1/search",
            search,
            RouteSpec("search", "search", True, "Web search (Tavily)", request_body=_SEARCH_BODY),
        ),
        RouteDef(
            "POST",
            "/v1/extract",
            extract,
            RouteSpec(
                "search", "search", True, "Page extraction (Tavily)", request_body=_EXTRACT_BODY
            ),
        ),
    ]
