"""One page of an OData entity set: its rows found, written as JSON, and the link to the
next page.

The entities are written by the database where it can write them exactly
(`gateway.data.odata_json`), else fetched and encoded here with orjson; both give the
same bytes. The page's JSON is spliced into the answer as it is, never parsed again.

On DuckDB, a page of plain rows ordered by one non-null integer key is found in one
step when its next link says how far the key moved over the previous page (the token's
``span``): the scan is bounded a little past where the page should end, and only when
the bound turns out too tight is the page found the long way (first the key of the row
after it, then the rows between: `Dataset.bounded_pages`).
"""

from __future__ import annotations

import decimal
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway.config import config_key
from gateway.data.datasets import Dataset, DatasetQuery
from gateway.data.edm import edm_type
from gateway.data.filter_tree import EDM_INT64
from gateway.data.keyset import Opened, SkipTokens
from gateway.data.odata_json import Page, database_page
from gateway.data.odata_options import FeedQuery
from gateway.data.runner import run_dataset_query
from gateway.ops.request_usage import usage_key

__all__ = ["feed_json", "page_response", "skip_tokens_key"]

skip_tokens_key: web.AppKey[SkipTokens] = web.AppKey("skip_tokens", SkipTokens)
_INT64: Final = (-(2**63), 2**63 - 1)


def feed_json(data: Any, *, as_strings: bool = False) -> web.Response:
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


def _root(request: web.Request) -> str:
    return str(request.url.with_path("/odata/").with_query(None))


async def page_response(
    request: web.Request,
    dataset: Dataset,
    feed: FeedQuery,
    page: int,
    opened: Opened | None,
    binding: str,
    as_strings: bool,
) -> web.Response:
    """The page after `opened`'s position (the first page without one)."""
    delivered = 0 if opened is None else opened.delivered
    remaining = None if feed.top is None else max(0, feed.top - delivered)
    limit = page if remaining is None else min(page, remaining)
    dims = tuple(c for c in feed.chosen if c in dataset.dimensions)
    metrics = tuple(c for c in feed.chosen if c in dataset.metrics)
    after = None if opened is None else tuple(opened.position)
    query = DatasetQuery(
        dims, metrics, feed.where, "$filter", feed.orders, limit + 1,
        0 if after is not None else feed.skip, after,
    )  # fmt: skip
    entities = await _rows(request, dataset, query, limit, as_strings, opened)
    request[usage_key].rows = entities.rows
    context = _root(request) + f"$metadata#{dataset.config.name}"
    if feed.normalised["select"] != [*dataset.dimensions, *dataset.metrics]:
        context += f"({','.join(feed.chosen)})"
    body: dict[str, Any] = {"@odata.context": context}
    if feed.with_count:
        counted = await run_dataset_query(
            request, dataset, DatasetQuery(dims, metrics, feed.where, "$filter", count_only=True)
        )
        body["@odata.count"] = int(counted.rows[0][0])
    body["value"] = orjson.Fragment(entities.values)
    left = None if remaining is None else remaining - entities.rows
    if entities.more and entities.position is not None and (left is None or left > 0):
        span = _span(dataset, query, entities)
        token = request.app[skip_tokens_key].issue(
            binding, entities.position, delivered + entities.rows, span
        )
        body["@odata.nextLink"] = _next_link(request, token)
    return feed_json(body, as_strings=as_strings)


async def _rows(
    request: web.Request,
    dataset: Dataset,
    query: DatasetQuery,
    limit: int,
    as_strings: bool,
    opened: Opened | None,
) -> Page:
    if dataset.bounded_pages(query):
        guess = _guessed_end(query, opened)
        if guess is not None:
            entities = await _written(request, dataset, guess, limit, as_strings)
            if entities.fetched > limit or entities.cut:  # the page lies within the guess
                return entities
        query = await _bounded(request, dataset, query, limit)
    return await _written(request, dataset, query, limit, as_strings)


async def _written(
    request: web.Request, dataset: Dataset, query: DatasetQuery, limit: int, as_strings: bool
) -> Page:
    page = await database_page(request, dataset, query, limit, as_strings=as_strings)
    return page or await _python_page(request, dataset, query, limit, as_strings)


def _guessed_end(query: DatasetQuery, opened: Opened | None) -> DatasetQuery | None:
    """`query` bounded one and a half times the previous page's span past its position,
    when the order is one integer key: rows past the bound all sort after the rows
    within it, so the page is right whenever the bound holds more rows than it."""
    if opened is None or opened.span is None or query.after is None or len(query.after) != 1:
        return None
    start = query.after[0]
    if len(query.order_by) != 1 or not _integer(start):
        return None
    reach = opened.span + opened.span // 2 + 2
    end = start - reach if query.order_by[0].descending else start + reach
    if not _INT64[0] <= end <= _INT64[1]:
        return None
    return DatasetQuery(**{**_fields(query), "until": (end,)})


def _span(dataset: Dataset, query: DatasetQuery, entities: Page) -> int | None:
    """How far the one integer sort key moved over this page (from the previous page's
    last row, or this page's first), for the next page's guess."""
    if len(query.order_by) != 1 or entities.position is None:
        return None
    start = entities.first if query.after is None else query.after[0]
    last = entities.position[0]
    if not dataset.bounded_pages(query) or not (_integer(start) and _integer(last)):
        return None
    return int(abs(last - start))


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def _python_page(
    request: web.Request, dataset: Dataset, query: DatasetQuery, limit: int, as_strings: bool
) -> Page:
    """The page's rows fetched into Python and encoded there."""
    result = await run_dataset_query(request, dataset, query)
    rows = result.rows
    fetched = len(rows)
    more = fetched > limit or result.too_large  # a page cut by size continues on the next
    rows = rows[:limit]
    names = [c.name for c in result.columns]
    keys = [names.index(order.field) for order in query.order_by]
    position = [rows[-1][k] for k in keys] if more and rows else None
    values = orjson.dumps(
        _entities(dataset, names, rows, as_strings),
        default=_value_as_string if as_strings else _value,
        option=orjson.OPT_NAIVE_UTC,
    )
    first = rows[0][keys[0]] if rows and keys and query.after is None else None
    return Page(values, len(rows), more, position, fetched, result.too_large, first)


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
