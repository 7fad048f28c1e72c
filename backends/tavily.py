"""Tavily's web search and extract API.

Options (beside the common backend keys): ``base_url`` (default ``https://api.tavily.com``),
``api_key``, ``headers``, ``max_connections``. Bodies pass through as Tavily defines them;
the answer's arrays are made sure to be arrays, since Tavily's JS SDK maps over them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from backends.base import (
    Backend,
    BackendKind,
    CallContext,
    Health,
    JSONResponse,
    reject_unknown_options,
)
from backends.http import (
    HTTPOptions,
    new_pool,
    raise_for_upstream,
    read_capped,
    transport_error,
)
from backends.http_client import HTTPClientError, Pool
from gateway.errors import BackendUnavailable

__all__ = ["TavilyBackend", "create"]

DEFAULT_BASE_URL = "https://api.tavily.com"
_OWN_OPTIONS = frozenset({"base_url", "api_key", "headers", "max_connections"})
_ARRAYS = {"/search": ("results", "images"), "/extract": ("results", "failed_results")}


def create(
    name: str,
    options: Mapping[str, Any],
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_response_bytes: int = 64 * 1024 * 1024,
) -> Backend:
    reject_unknown_options(options, _OWN_OPTIONS, "tavily")
    return TavilyBackend(
        name,
        HTTPOptions(
            options, default_base_url=DEFAULT_BASE_URL, max_response_bytes=max_response_bytes
        ),
        connect_timeout_s=connect_timeout_s,
    )


class TavilyBackend:
    kind: BackendKind = "search"

    def __init__(self, name: str, options: HTTPOptions, *, connect_timeout_s: float) -> None:
        self.name = name
        self.options = options
        self.connect_timeout_s = connect_timeout_s
        self._pool: Pool | None = None

    async def start(self) -> None:
        self._pool = new_pool(self.options, connect_timeout_s=self.connect_timeout_s)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def health(self) -> Health:
        # Tavily has no free endpoint to probe; a search would spend credits. The breaker
        # tells readiness about failures seen on real traffic instead.
        return Health(self._pool is not None, "" if self._pool else "not started")

    async def search(self, body: Mapping[str, Any], ctx: CallContext) -> JSONResponse:
        return await self._post("/search", body, ctx)

    async def extract(self, body: Mapping[str, Any], ctx: CallContext) -> JSONResponse:
        return await self._post("/extract", body, ctx)

    async def _post(self, path: str, body: Mapping[str, Any], ctx: CallContext) -> JSONResponse:
        if self._pool is None:
            raise BackendUnavailable(f"backend {self.name!r} is not started", backend=self.name)
        started = time.perf_counter()
        try:
            async with await self._pool.request(
                "POST", path, orjson.dumps(body), (("X-Request-ID", ctx.request_id),)
            ) as response:
                await raise_for_upstream(self.name, response)
                raw = await read_capped(response, self.options.max_response_bytes, self.name)
                status = response.status
        except HTTPClientError as exc:
            raise transport_error(self.name, exc) from exc
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise transport_error(self.name, exc) from exc
        if not isinstance(answer, dict):
            raise transport_error(self.name, ValueError("not a JSON object"))
        for field in _ARRAYS[path]:
            if not isinstance(answer.get(field), list):
                answer[field] = []
        answer.setdefault("response_time", round(time.perf_counter() - started, 3))
        return JSONResponse(status, orjson.dumps(answer))
