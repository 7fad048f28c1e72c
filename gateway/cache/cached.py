"""How a route answers through the response cache: one call, the parts of its key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from gateway.cache.response_cache import (
    CacheEntry,
    Produce,
    cache_key,
    json_entry,
    response_cache_key,
)
from gateway.edge.principal import principal_key
from gateway.ops.request_usage import usage_key

__all__ = ["cached", "rows_guarded_entry"]


async def cached(
    request: web.Request,
    route_class: str,
    parts: Sequence[Any],
    produce: Produce,
    *,
    storable: Callable[[web.StreamResponse], CacheEntry | None] = json_entry,
) -> web.StreamResponse:
    """`produce()`'s answer, through the cache when `route_class` is cached.

    The key is the caller's tenant, the route class and `parts` (backend, model or
    dataset and its version, the canonical body): never the caller's key.
    """
    cache = request.app[response_cache_key]
    if not cache.enabled_for(route_class):
        return await produce()
    key = cache_key(request[principal_key].tenant, route_class, *parts)
    return await cache.serve(request, route_class, key, produce, storable=storable)


def rows_guarded_entry(request: web.Request) -> Callable[[web.StreamResponse], CacheEntry | None]:
    """`json_entry`, except for answers with more rows than ``cache.max_rows``."""
    limit = request.app[response_cache_key].config.max_rows

    def storable(response: web.StreamResponse) -> CacheEntry | None:
        if request[usage_key].rows > limit:
            return None
        return json_entry(response)

    return storable
