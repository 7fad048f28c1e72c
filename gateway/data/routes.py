"""The data path: read-only SQL on a named backend, and datasets.

``POST /v1/query`` runs one checked read-only statement (`gateway.data.sql_safety`) with
bound parameters and a row limit pushed into it. Raw SQL cannot be scoped to a tenant,
so a key restricted to some datasets may not use it, and a backend may turn it off
(``raw_sql: false``); datasets are the tenant-safe way in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from backends.base import QueryResult
from gateway.cache.cached import cached, rows_guarded_entry
from gateway.config import config_key
from gateway.data.dataset_request import parse_query
from gateway.data.datasets import Dataset, DatasetQuery, build_datasets
from gateway.data.runner import run_dataset_query, run_sql
from gateway.data.schema import describe
from gateway.data.sql_json import encode_result
from gateway.data.sql_safety import bound_row_size, check_read_only, limit_rows
from gateway.edge.body import read_json
from gateway.edge.principal import principal_key
from gateway.errors import BadRequest, Forbidden, NotFound, ResponseTooLarge, TollwayError
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import usage_key
from gateway.resilience.guard import Guard
from gateway.resilience.registry import backends_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["datasets_key", "describe_dataset", "routes", "setup"]

datasets_key: web.AppKey[dict[str, Dataset]] = web.AppKey("datasets")


def setup(app: web.Application) -> None:
    """The datasets, built from the config (their SQL is checked on the way)."""
    app[datasets_key] = build_datasets(app[config_key])


def _sql_backend(request: web.Request, name: object) -> Guard[Any]:
    if not isinstance(name, str) or not name:
        raise BadRequest("'backend' must name a data backend", param="backend")
    guard = request.app[backends_key].get(name)
    if getattr(guard.backend, "kind", None) != "sql":
        raise NotFound(f"{name!r} is not a data backend", code="backend_not_found")
    return guard


def _refuse(request: web.Request, reason: str, error: TollwayError) -> TollwayError:
    request.app[metrics_key].query_refusals.labels(reason).inc()
    return error


def _answer(
    request: web.Request, guard: Guard[Any], result: QueryResult, max_rows: int
) -> web.Response:
    rows = list(result.rows)
    truncated = len(rows) > max_rows or result.too_large
    if truncated:
        del rows[max_rows:]
    usage = request[usage_key]
    usage.backend = guard.name
    usage.rows = len(rows)
    request.app[metrics_key].query_rows.labels(guard.name).inc(len(rows))
    return web.Response(
        body=encode_result(result.columns, rows, truncated=truncated),
        content_type="application/json",
    )


def _max_rows(body: dict[str, Any], cap: int) -> int:
    asked = body.get("max_rows", cap)
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise BadRequest("'max_rows' must be a positive integer", param="max_rows")
    return min(asked, cap)


async def query(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    unknown = sorted(set(body) - {"backend", "sql", "params", "max_rows"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", param=unknown[0])
    principal = request[principal_key]
    if principal.datasets is not None:
        raise _refuse(request, "scope", Forbidden(
            "this key is limited to datasets; raw SQL cannot be scoped to them",
            code="raw_sql_not_allowed",
        ))  # fmt: skip
    guard = _sql_backend(request, body.get("backend"))
    if not guard.config.raw_sql:
        raise _refuse(request, "disabled", Forbidden(
            f"raw SQL is turned off for backend {guard.name!r}; use its datasets",
            code="raw_sql_not_allowed",
        ))  # fmt: skip
    params = body.get("params", [])
    if not isinstance(params, list) or any(isinstance(p, dict | list) for p in params):
        raise BadRequest("'params' must be a list of plain values", param="params")
    max_rows = _max_rows(body, guard.config.max_rows)
    try:
        checked = check_read_only(
            body.get("sql"),  # type: ignore[arg-type]
            guard.backend.dialect,
            max_depth=guard.config.max_sql_depth,
            max_value_bytes=guard.config.max_response_bytes,
        )
    except BadRequest as error:
        raise _refuse(request, error.code, error) from None
    except ResponseTooLarge as error:
        raise _refuse(request, error.code, error) from None
    limited = limit_rows(checked, max_rows + 1)
    if guard.backend.dialect == "postgres":  # no huge value ever leaves the server
        limited = bound_row_size(limited, guard.config.max_response_bytes)
    sql = limited.sql()

    async def produce() -> web.Response:
        result = await run_sql(request, guard, sql, params)
        return _answer(request, guard, result, max_rows)

    parts = (guard.name, sql, params, max_rows)
    return await cached(request, "query", parts, produce, storable=rows_guarded_entry(request))


def _dataset(request: web.Request, name: str) -> Dataset:
    dataset = request.app[datasets_key].get(name)
    if dataset is None:
        raise NotFound(f"no dataset named {name!r}", code="dataset_not_found")
    if not request[principal_key].may_read_dataset(name):
        raise Forbidden(f"this key may not read the dataset {name!r}", code="dataset_not_allowed")
    return dataset


async def describe_dataset(request: web.Request, dataset: Dataset) -> dict[str, str]:
    """Each field's backend type, asked of the backend once and then remembered."""
    guard = request.app[backends_key].get(dataset.config.backend)
    return await describe(dataset, lambda sql, params: run_sql(request, guard, sql, params))


async def list_datasets(request: web.Request) -> web.Response:
    principal = request[principal_key]
    visible = [d for n, d in request.app[datasets_key].items() if principal.may_read_dataset(n)]
    described = await asyncio.gather(*(describe_dataset(request, d) for d in visible))
    data = [
        {
            "name": d.config.name,
            "dimensions": [{"name": n, "type": types.get(n)} for n in d.dimensions],
            "metrics": [{"name": n, "type": types.get(n)} for n in d.metrics],
            "time_dimension": d.config.time_dimension,
        }
        for d, types in zip(visible, described, strict=True)
    ]
    return web.json_response({"object": "list", "data": data})


async def query_dataset(request: web.Request) -> web.StreamResponse:
    dataset = _dataset(request, request.match_info["name"])
    guard = request.app[backends_key].get(dataset.config.backend)
    body = await read_json(request)
    await describe_dataset(request, dataset)  # filter values take the fields' real types
    dataset_query = parse_query(dataset, body, max_rows=guard.config.max_rows)
    limit = dataset_query.limit if dataset_query.limit is not None else guard.config.max_rows
    probe = DatasetQuery(**{**_fields(dataset_query), "limit": limit + 1})
    request[usage_key].model = dataset.config.name

    async def produce() -> web.Response:
        result = await run_dataset_query(request, dataset, probe)
        return _answer(request, guard, result, limit)

    parts = (dataset.config.name, dataset.version, body)
    return await cached(request, "datasets", parts, produce, storable=rows_guarded_entry(request))


def _fields(dataset_query: DatasetQuery) -> dict[str, Any]:
    return {name: getattr(dataset_query, name) for name in dataset_query.__dataclass_fields__}


_QUERY_BODY = {
    "type": "object",
    "required": ["backend", "sql"],
    "properties": {
        "backend": {"type": "string"},
        "sql": {"type": "string"},
        "params": {"type": "array"},
        "max_rows": {"type": "integer", "minimum": 1},
    },
}
_DATASET_BODY = {
    "type": "object",
    "properties": {
        "dimensions": {"type": "array", "items": {"type": "string"}},
        "metrics": {"type": "array", "items": {"type": "string"}},
        "filters": {"type": "array", "items": {"type": "object"}},
        "order_by": {"type": "array"},
        "limit": {"type": "integer", "minimum": 0},
        "offset": {"type": "integer", "minimum": 0},
    },
}


def routes() -> list[RouteDef]:
    return [
        RouteDef("POST", "/v1/query", query,
                 RouteSpec("query", "query", True, "Read-only SQL on a data backend",
                           request_body=_QUERY_BODY)),
        RouteDef("GET", "/v1/datasets", list_datasets,
                 RouteSpec("datasets", "query", True, "The datasets this key may read")),
        RouteDef("POST", "/v1/datasets/{name}/query", query_dataset,
                 RouteSpec("datasets", "query", True, "Query a dataset",
                           request_body=_DATASET_BODY)),
    ]  # fmt: skip
