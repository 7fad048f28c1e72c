"""OData v4 feeds of the datasets, for Power BI, Excel and Tableau.

``/odata/`` lists the datasets the caller's key may read, ``/odata/$metadata`` describes
them, and ``/odata/{dataset}`` serves rows with ``$select $filter $orderby $top $skip
$count`` pushed down into SQL, a page at a time. Every page but the last carries an
``@odata.nextLink`` whose signed ``$skiptoken`` holds the last row's position
(`gateway.data.keyset`): page N costs what page 1 costs, and rows added between pages
never make a row repeat or vanish. A page's entities are written as JSON by the database
wherever it can write them exactly as Python would (`gateway.data.odata_page`). Pages go
through the tenant-scoped response cache. Query options we do not implement answer 501,
never a silently wrong result.
"""

from __future__ import annotations

import functools
import logging
import secrets
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.cache.cached import cached, rows_guarded_entry
from gateway.config import config_key
from gateway.data.datasets import Dataset, DatasetQuery
from gateway.data.keyset import SkipTokens, binding_digest
from gateway.data.odata_limits import admit
from gateway.data.odata_metadata import metadata_xml
from gateway.data.odata_options import check_version, ieee754, page_size, read_options
from gateway.data.odata_page import feed_json, page_response, skip_tokens_key
from gateway.data.routes import datasets_key, describe_dataset
from gateway.data.runner import run_dataset_query
from gateway.edge.principal import principal_key
from gateway.errors import BadRequest, Forbidden, NotFound, TollwayError
from gateway.ops.request_usage import usage_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes", "setup", "skip_tokens_key"]

_log = logging.getLogger("tollway.odata")
_JSON: Final = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible="


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
    response = feed_json(
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
    opened = None
    if feed.skiptoken is not None:
        opened = request.app[skip_tokens_key].open(feed.skiptoken, binding)
        if len(opened.position) != len(feed.orders):
            raise BadRequest("$skiptoken does not fit this query: start again", param="$skiptoken")

    request[usage_key].model = dataset.config.name

    async def produce() -> web.Response:
        return await page_response(request, dataset, feed, page, opened, binding, as_strings)

    parts = (
        dataset.config.name, dataset.version, feed.normalised, feed.skip, feed.skiptoken,
        page, as_strings, _root(request),
    )  # fmt: skip
    response = await cached(request, "odata", parts, produce, storable=rows_guarded_entry(request))
    _decorate(response, as_strings=as_strings, applied=applied)
    return response


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
