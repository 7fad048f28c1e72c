"""Running SQL on a data backend through its guard (breaker, deadline, bulkhead), and
running a dataset query for the caller's tenant."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from backends.base import CallContext, QueryResult
from gateway.data.datasets import Dataset, DatasetQuery
from gateway.data.schema import describe
from gateway.edge.principal import principal_key
from gateway.edge.request_id import request_id_key
from gateway.errors import ResponseTooLarge
from gateway.resilience.guard import Guard
from gateway.resilience.registry import backends_key

__all__ = ["run_dataset_query", "run_sql", "too_large"]

_log = logging.getLogger("tollway.data")


async def run_sql(
    request: web.Request, guard: Guard[Any], sql: str, params: list[Any], *, bounded: bool = True
) -> QueryResult:
    """Run `sql` on `guard`'s backend; with `bounded`, fetching stops at the backend's
    ``max_response_bytes`` (a statement that bounds its own answer passes False)."""
    ctx = CallContext(request[request_id_key], request[principal_key].tenant)
    timeout_s = guard.config.timeout_s
    _log.debug("query", extra={"backend": guard.name, "sql": sql, "params": len(params)})

    max_bytes = guard.config.max_response_bytes

    async def once() -> QueryResult:
        result: QueryResult = await guard.backend.query(
            sql, params, ctx, timeout_s=timeout_s, max_bytes=max_bytes if bounded else None
        )
        return result

    # One second beyond the backend's own timeout: the database stops the query first.
    result = await guard.call(once, deadline=guard.deadline(timeout_s + 1.0))
    if result.too_large and not result.rows:
        raise too_large(guard.name, max_bytes)
    return result


def too_large(backend: str, max_bytes: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"the answer would be larger than {max_bytes} bytes (max_response_bytes of backend "
        f"{backend!r}): ask for fewer rows or columns, or smaller values",
        backend=backend,
    )


async def run_dataset_query(
    request: web.Request, dataset: Dataset, dataset_query: DatasetQuery
) -> QueryResult:
    """Run a dataset query for the caller's tenant (used by the OData feeds too)."""
    guard = request.app[backends_key].get(dataset.config.backend)
    await describe(dataset, lambda sql, params: run_sql(request, guard, sql, params))
    sql, params = dataset.build(dataset_query, request[principal_key].tenant)
    return await run_sql(request, guard, sql, params)
