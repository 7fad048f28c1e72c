"""OData v4 feeds of the datasets, for Power BI, Excel and Tableau.

``/odata/`` lists the datasets the caller's key may read, ``/odata/$metadata`` describes
them, and ``/odata/{dataset}`` serves rows with ``$select $filter $orderby $top $skip
$count`` pushed down into SQL, a page at a time. Every page but the last carries an
``@odata.nextLink`` whose signed ``$skiptoken`` holds the last row's position
(`gateway.data.keyset`): page N costs what page 1 costs, and rows added between pages
never make a row repeat or vanish. Pages go through the tenant-scoped response cache.
Query options we do not implement answer 501, never a silently wrong result.
"""

from __future__ import annotations

import decimal
import functools
import logging
import secrets
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.cache.cached import cached, rows_guarded_entry
from gateway.config import config_key
from gateway.data.datasets import Dataset, DatasetQuery
from gateway.data.edm import edm_type
from gateway.data.filter_tree import EDM_INT64
from gateway.data.keyset import SkipTokens, binding_digest
from gateway.data.odata_limits import admit
from gateway.data.odata_metadata import metadata_xml
from gateway.data.odata_options import FeedQuery, check_version, ieee754, page_size, read_options
from gateway.data.routes import datasets_key, describe_dataset
from gateway.data.runner import run_dataset_query
from gateway.edge.principal import principal_key
from gateway.errors import BadRequest, Forbidden, NotFound, TollwayError
from gateway.ops.request_usage import usage_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes", "setup", "skip_tokens_key"]

_log = logging.getLogger("tollway.odata")
_JSON: Final = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible="

skip_tokens_key: web.AppKey[SkipTokens] = web.AppKey("skip_tokens", SkipTokens)


def setup(app: web.Application) -> None:
    """The ``$skiptoken`` signer: the configured secrets, else one of this process's own."""
    config = app[config_key]
    configured = config.odata.skiptoken_secrets
    if not configured and (config.server.replicas > 1 or config.server.workers > 1):
        _log.warning(
            "odata.skiptoken_secret is not set: each process signs next links with its own "
            "secret, so a link followed to another replica or worker answers 400"
        )
    keys = [s.encode() for s in configured] or [secrets.token_bytes(32)]
    app[skip_tokens_key] = SkipTokens(keys)


def _json(data: Any, *, as_strings: bool = False) -> web.Response:
    # Naive timestamps are UTC: orjson writes them with +00:00, as Edm.DateTimeOffset needs.
    body = orjson.dumps(
        data, default=_value_as_string if as_strings else _value, option=orjson.OPT_NAIVE_UTC
    )
    return web.Response(body=body, content_type="application/json")


def _value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return orjson.Fragment(format(value, "f")) if value.is_finite() else None
    return str(value)


def _value_as_string(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return format(value, "f") if value.is_finite() else None
    return str(value)


def _decorate(response: web.StreamResponse, *, as_strings: bool, applied: int | None) -> None:
    response.headers["OData-Version"] = "4.0"
    response.headers["Content-Type"] = _JSON + ("true" if as_strings else "false")
    if applied is not None:
        response.headers["Preference-Applied"] = f"odata.maxpagesize={applied}"


def _root(request: web.Request) -> str:
    return str(request.url.with_path("/odata/").with_query(None))


def _visible(request: web.Request) -> dict[str, Dataset]:
    principal = request[principal_key]
    return {n: d for n, d in request.app[datasets_key].items() if principal.may_read_dataset(n)}


def _dataset(request: web.Request) -> Dataset:
    name = request.match_info["dataset"]
    dataset = request.app[datasets_key].get(name)
    if dataset is None:
        raise NotFound(f"no entity set named {name!r}", code="dataset_not_found")
    if not request[principal_key].may_read_dataset(name):
        raise Forbidden(f"this key may not read {name!r}", code="dataset_not_allowed")
    return dataset


async def service_document(request: web.Request) -> web.Response:
    check_version(request)
    response = _json(
        {
            "@odata.context": _root(request) + "$metadata",
            "value": [{"name": n, "kind": "EntitySet", "url": n} for n in _visible(request)],
        }
    )
    _decorate(response, as_strings=False, applied=None)
    return response


async def metadata(request: web.Request) -> web.Response:
    check_version(request)
    visible = _visible(request)
    for dataset in visible.values():
        await describe_dataset(request, dataset)
    return metadata_xml(visible)


async def entity_set(request: web.Request) -> web.StreamResponse:
    check_version(request)
    dataset = _dataset(request)
    # A page reached through a next link counts apart; a token that is not genuine is a
    # 400 below, before any query runs.
    await admit(request, continuation=any(k.lower() == "$skiptoken" for k in request.query))
    odata = request.app[config_key].odata
    await describe_dataset(request, dataset)
    feed = read_options(request, dataset, odata)
    page, applied = page_size(request, odata)
    as_strings = ieee754(request)
    tenant = request[principal_key].tenant
    binding = binding_digest(dataset.config.name, dataset.version, tenant, feed.normalised)
    after: tuple[Any, ...] | None = None
    delivered = 0
    if feed.skiptoken is not None:
        position, delivered = request.app[skip_tokens_key].open(feed.skiptoken, binding)
        after = tuple(position)
        if len(after) != len(feed.orders):
            raise BadRequest("$skiptoken does not fit this query: start again", param="$skiptoken")

    request[usage_key].model = dataset.config.name

    async def produce() -> web.Response:
        return await _page(request, dataset, feed, page, after, delivered, binding, as_strings)

    parts = (
        dataset.config.name, dataset.version, feed.normalised, feed.skip, feed.skiptoken,
        page, as_strings, _root(request),
    )  # fmt: skip
    response = await cached(request, "odata", parts, produce, storable=rows_guarded_entry(request))
    _decorate(response, as_strings=as_strings, applied=applied)
    return response


async def _page(
    request: web.Request,
    dataset: Dataset,
    feed: FeedQuery,
    page: int,
    after: tuple[Any, ...] | None,
    delivered: int,
    binding: str,
    as_strings: bool,
) -> web.Response:
    remaining = None if feed.top is None else max(0, feed.top - delivered)
    limit = page if remaining is None else min(page, remaining)
    dims = tuple(c for c in feed.chosen if c in dataset.dimensions)
    metrics = tuple(c for c in feed.chosen if c in dataset.metrics)
    query = DatasetQuery(
        dims, metrics, feed.where, "$filter", feed.orders, limit + 1,
        0 if after is not None else feed.skip, after,
    )  # fmt: skip
    if dataset.bounded_pages(query):
        query = await _bounded(request, dataset, query, limit)
    result = await run_dataset_query(request, dataset, query)
    rows = result.rows
    more = len(rows) > limit or result.too_large  # a page cut by size continues on the next
    rows = rows[:limit]
    request[usage_key].rows = len(rows)
    names = [c.name for c in result.columns]
    context = _root(request) + f"$metadata#{dataset.config.name}"
    if feed.normalised["select"] != [*dataset.dimensions, *dataset.metrics]:
        context += f"({','.join(feed.chosen)})"
    body: dict[str, Any] = {"@odata.context": context}
    if feed.with_count:
        counted = await run_dataset_query(
            request, dataset, DatasetQuery(dims, metrics, feed.where, "$filter", count_only=True)
        )
        body["@odata.count"] = int(counted.rows[0][0])
    body["value"] = _entities(dataset, names, rows, as_strings)
    left = None if remaining is None else remaining - len(rows)
    if more and rows and (left is None or left > 0):
        last = rows[-1]
        position = [last[names.index(order.field)] for order in feed.orders]
        token = request.app[skip_tokens_key].issue(binding, position, delivered + len(rows))
        body["@odata.nextLink"] = _next_link(request, token)
    return _json(body, as_strings=as_strings)


async def _bounded(
    request: web.Request, dataset: Dataset, query: DatasetQuery, limit: int
) -> DatasetQuery:
    """`query` with an upper bound: the sort key of the row just after this page."""
    keys = tuple(o.field for o in query.order_by)
    probe = DatasetQuery(
        keys, (), query.where, query.where_param, query.order_by, 1, query.offset + limit,
        query.after,
    )  # fmt: skip
    found = await run_dataset_query(request, dataset, probe)
    if not found.rows:
        return query
    return DatasetQuery(**{**_fields(query), "until": tuple(found.rows[0])})


def _fields(query: DatasetQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in query.__dataclass_fields__}


def _entities(
    dataset: Dataset, names: list[str], rows: Any, as_strings: bool
) -> list[dict[str, Any]]:
    """Rows as entities: every property present; with IEEE754Compatible, Int64 as text."""
    if not as_strings:
        return [dict(zip(names, row, strict=True)) for row in rows]
    edms = [edm_type(dataset.types.get(n))[0] for n in names]
    integers = [i for i, edm in enumerate(edms) if edm == EDM_INT64]
    entities = []
    for row in rows:
        entity = dict(zip(names, row, strict=True))
        for index in integers:
            if row[index] is not None:
                entity[names[index]] = str(row[index])
        entities.append(entity)
    return entities


def _next_link(request: web.Request, token: str) -> str:
    key_param = request.app[config_key].odata.key_param
    dropped = {"$skip", "$skiptoken", key_param}
    query = {k: v for k, v in request.query.items() if k.lower() not in dropped and k != key_param}
    query["$skiptoken"] = token
    return str(request.url.with_query(None)) + "?" + urlencode(query, safe="$,'():")


async def count(request: web.Request) -> web.StreamResponse:
    check_version(request)
    dataset = _dataset(request)
    odata = request.app[config_key].odata
    await describe_dataset(request, dataset)
    feed = read_options(request, dataset, odata)
    dims = tuple(c for c in feed.chosen if c in dataset.dimensions)
    metrics = tuple(c for c in feed.chosen if c in dataset.metrics)

    async def produce() -> web.Response:
        query = DatasetQuery(dims, metrics, feed.where, "$filter", count_only=True)
        result = await run_dataset_query(request, dataset, query)
        return web.Response(text=str(int(result.rows[0][0])))

    parts = ("$count", dataset.config.name, dataset.version, feed.normalised)
    response = await cached(request, "odata", parts, produce)
    response.headers["OData-Version"] = "4.0"
    return response


def _odata_errors(handler: Handler) -> Handler:
    """Errors of the feeds carry ``OData-Version: 4.0`` like their answers."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TollwayError as error:
            error.extra_headers = {**error.extra_headers, "OData-Version": "4.0"}
            raise

    return wrapped


def routes() -> list[RouteDef]:
    def spec(summary: str) -> RouteSpec:
        return RouteSpec("odata", "odata", True, summary)

    return [
        RouteDef("GET", "/odata/", _odata_errors(service_document), spec("OData service document")),
        RouteDef(
            "GET", "/odata/$metadata", _odata_errors(metadata), spec("OData CSDL metadata (XML)")
        ),
        RouteDef(
            "GET",
            "/odata/{dataset}/$count",
            _odata_errors(count),
            spec("Row count of an entity set"),
        ),
        RouteDef(
            "GET",
            "/odata/{dataset}",
            _odata_errors(entity_set),
            # Limited in the handler: next links of an admitted read count apart.
            RouteSpec("odata", "odata", False, "Rows of an entity set, paged"),
        ),
    ]
