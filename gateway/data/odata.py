"""OData v4 feeds of the datasets, for Power BI, Excel and Tableau.

``/odata/`` lists the datasets the caller's key may read, ``/odata/$metadata`` describes
them (types from the backend's real column types; never the tenant column), and
``/odata/{dataset}`` serves rows with ``$select $filter $orderby $top $skip $count``
pushed down into SQL, a page at a time with ``@odata.nextLink``. Rows always come in a
stable order (the key columns end every ORDER BY), so pages never repeat or skip a row.
Query options we do not implement answer 501, never a silently wrong result.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from typing import Any, Final
from urllib.parse import urlencode
from xml.sax.saxutils import quoteattr

import orjson
from aiohttp import web

from gateway.config import config_key
from gateway.data.datasets import Dataset, DatasetQuery, Order
from gateway.data.odata_filter import parse_filter
from gateway.data.routes import datasets_key, describe, run_dataset_query
from gateway.edge.principal import principal_key
from gateway.errors import BadRequest, Forbidden, NotFound, NotSupported
from gateway.ops.request_usage import usage_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["edm_type", "routes"]

_JSON: Final = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false"
)
_SUPPORTED: Final = frozenset(
    {"$select", "$filter", "$orderby", "$top", "$skip", "$count", "$format"}
)
_KNOWN: Final = frozenset({"$expand", "$apply", "$search", "$compute", "$levels", "$skiptoken",
                           "$index", "$schemaversion", "$deltatoken", "$id"})  # fmt: skip


def edm_type(backend_type: str | None) -> tuple[str, dict[str, str]]:
    """The Edm type (and facets) for a backend column type."""
    kind = (backend_type or "").lower()
    if match := re.match(r"(?:decimal|numeric)\((\d+),\s*(\d+)\)", kind):
        return "Edm.Decimal", {"Precision": match.group(1), "Scale": match.group(2)}
    if kind.startswith(("decimal", "numeric")) or kind == "hugeint":
        return "Edm.Decimal", {"Scale": "variable"}
    if kind in ("bigint", "int8", "integer", "int", "int4", "smallint", "int2", "tinyint",
                "ubigint", "uinteger", "usmallint", "utinyint"):  # fmt: skip
        return "Edm.Int64", {}
    if kind in ("double", "float", "float8", "real", "float4", "double precision"):
        return "Edm.Double", {}
    if kind in ("boolean", "bool"):
        return "Edm.Boolean", {}
    if kind == "date":
        return "Edm.Date", {}
    if kind.startswith("timestamp") or kind == "timestamptz":
        return "Edm.DateTimeOffset", {}
    return "Edm.String", {}


def _headers() -> dict[str, str]:
    return {"OData-Version": "4.0"}


def _json(data: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=_value), headers=_headers(), content_type="application/json"
    )


def _value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return orjson.Fragment(format(value, "f")) if value.is_finite() else None
    return str(value)


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
    return _json(
        {
            "@odata.context": _root(request) + "$metadata",
            "value": [{"name": n, "kind": "EntitySet", "url": n} for n in _visible(request)],
        }
    )


def _type_name(dataset: Dataset) -> str:
    return "".join(part.capitalize() for part in dataset.config.name.split("_")) or "Row"


def _key(dataset: Dataset) -> list[str]:
    return list(dataset.config.key) or dataset.dimensions


async def metadata(request: web.Request) -> web.Response:
    visible = _visible(request)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
        '<edmx:Reference Uri="https://oasis-tcs.github.io/odata-vocabularies/vocabularies/Org.OData.Capabilities.V1.xml">',
        '<edmx:Include Namespace="Org.OData.Capabilities.V1" Alias="Capabilities"/>',
        "</edmx:Reference>",
        "<edmx:DataServices>",
        '<Schema Namespace="Tollway" xmlns="http://docs.oasis-open.org/odata/ns/edm">',
    ]
    for dataset in visible.values():
        types = await describe(request, dataset)
        lines.append(f"<EntityType Name={quoteattr(_type_name(dataset))}>")
        lines.append(
            "<Key>"
            + "".join(f"<PropertyRef Name={quoteattr(k)}/>" for k in _key(dataset))
            + "</Key>"
        )
        for name in (*dataset.dimensions, *dataset.metrics):
            edm, facets = edm_type(types.get(name))
            extra = "".join(f" {k}={quoteattr(v)}" for k, v in facets.items())
            nullable = ' Nullable="false"' if name in _key(dataset) else ""
            lines.append(
                f"<Property Name={quoteattr(name)} Type={quoteattr(edm)}{extra}{nullable}/>"
            )
        lines.append("</EntityType>")
    lines.append('<EntityContainer Name="Container">')
    for name, dataset in visible.items():
        entity_type = quoteattr("Tollway." + _type_name(dataset))
        lines.append(f"<EntitySet Name={quoteattr(name)} EntityType={entity_type}>")
        lines += _SET_ANNOTATIONS
        lines.append("</EntitySet>")
    lines.append(_FILTER_FUNCTIONS)
    lines += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
    return web.Response(text="\n".join(lines), content_type="application/xml", headers=_headers())


_SET_ANNOTATIONS: Final = [
    '<Annotation Term="Capabilities.CountRestrictions"><Record>'
    '<PropertyValue Property="Countable" Bool="true"/></Record></Annotation>',
    '<Annotation Term="Capabilities.TopSupported" Bool="true"/>',
    '<Annotation Term="Capabilities.SkipSupported" Bool="true"/>',
    '<Annotation Term="Capabilities.ExpandRestrictions"><Record>'
    '<PropertyValue Property="Expandable" Bool="false"/></Record></Annotation>',
]
_FILTER_FUNCTIONS: Final = (
    '<Annotation Term="Capabilities.FilterFunctions"><Collection>'
    "<String>contains</String><String>startswith</String><String>endswith</String>"
    "</Collection></Annotation>"
)


def _int_option(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer", param=name)
    return int(raw)


def _options(
    request: web.Request, dataset: Dataset
) -> tuple[list[str], Any, list[Order], int | None, int, bool]:
    key_param = request.app[config_key].odata.key_param
    for name in request.query:
        if name.startswith("$") and name not in _SUPPORTED:
            if name in _KNOWN:
                raise NotSupported(f"{name} is not supported by this service")
            raise BadRequest(f"unknown query option {name}", param=name)
        if not name.startswith("$") and name != key_param:
            raise BadRequest(f"unknown query option {name!r}", param=name)
    if request.query.get("$format", "json") not in ("json", "application/json"):
        raise NotSupported("only JSON is served ($format=json)")
    fields = set(dataset.fields)
    select = [s.strip() for s in request.query.get("$select", "").split(",") if s.strip()]
    if select == ["*"]:
        select = []
    for name in select:
        if name not in fields:
            raise BadRequest(f"$select: no property {name!r}", param="$select")
    chosen = select or [*dataset.dimensions, *dataset.metrics]
    where = parse_filter(request.query["$filter"], fields) if "$filter" in request.query else None
    orders: list[Order] = []
    for part in request.query.get("$orderby", "").split(","):
        words = part.split()
        if not words:
            continue
        if (
            words[0] not in chosen
            or len(words) > 2
            or (len(words) == 2 and words[1] not in ("asc", "desc"))
        ):
            raise BadRequest(f"$orderby: cannot order by {part.strip()!r}", param="$orderby")
        orders.append(Order(words[0], len(words) == 2 and words[1] == "desc"))
    for name in _key(dataset):  # a stable order, so pages neither repeat nor skip rows
        if name in chosen and all(o.field != name for o in orders):
            orders.append(Order(name))
    for name in chosen:
        if all(o.field != name for o in orders):
            orders.append(Order(name))
    count = request.query.get("$count", "false")
    if count not in ("true", "false"):
        raise BadRequest("$count is true or false", param="$count")
    skip = _int_option(request, "$skip") or 0
    return chosen, where, orders, _int_option(request, "$top"), skip, count == "true"


def _page_size(request: web.Request) -> int:
    odata = request.app[config_key].odata
    prefer = re.search(r"odata\.maxpagesize=(\d+)", request.headers.get("Prefer", ""))
    if prefer:
        return max(1, min(int(prefer.group(1)), odata.max_page_size))
    return odata.page_size


async def entity_set(request: web.Request) -> web.Response:
    dataset = _dataset(request)
    chosen, where, orders, top, skip, with_count = _options(request, dataset)
    page = _page_size(request)
    limit = page if top is None else min(page, top)
    dims = tuple(c for c in chosen if c in dataset.dimensions)
    metrics = tuple(c for c in chosen if c in dataset.metrics)
    query = DatasetQuery(dims, metrics, (), tuple(orders), limit + 1, skip, where=where)
    result = await run_dataset_query(request, dataset, query)
    rows = list(result.rows)
    more = len(rows) > limit
    rows = rows[:limit]
    request[usage_key].model = dataset.config.name
    request[usage_key].rows = len(rows)
    types = dataset.types
    names = [c.name for c in result.columns]
    stamps = [edm_type(types.get(n))[0] == "Edm.DateTimeOffset" for n in names]
    value = [
        {n: (_offset(v) if stamp else v) for n, v, stamp in zip(names, row, stamps, strict=True)}
        for row in rows
    ]
    context = _root(request) + f"$metadata#{dataset.config.name}"
    if request.query.get("$select"):
        context += f"({','.join(chosen)})"
    body: dict[str, Any] = {"@odata.context": context}
    if with_count:
        counted = await run_dataset_query(
            request, dataset, DatasetQuery(dims, metrics, where=where, count_only=True)
        )
        body["@odata.count"] = int(counted.rows[0][0])
    body["value"] = value
    remaining = None if top is None else top - len(rows)
    if more and (remaining is None or remaining > 0):
        body["@odata.nextLink"] = _next_link(request, skip + len(rows), remaining)
    response = _json(body)
    response.content_type = "application/json"
    response.headers["Content-Type"] = _JSON
    return response


def _offset(value: Any) -> Any:
    """Edm.DateTimeOffset needs an offset: a naive timestamp is taken as UTC."""
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _next_link(request: web.Request, skip: int, remaining: int | None) -> str:
    key_param = request.app[config_key].odata.key_param
    query = {k: v for k, v in request.query.items() if k not in ("$skip", "$top", key_param)}
    query["$skip"] = str(skip)
    if remaining is not None:
        query["$top"] = str(remaining)
    return str(request.url.with_query(None)) + "?" + urlencode(query, safe="$,'():")


async def count(request: web.Request) -> web.Response:
    dataset = _dataset(request)
    chosen, where, _, _, _, _ = _options(request, dataset)
    dims = tuple(c for c in chosen if c in dataset.dimensions)
    metrics = tuple(c for c in chosen if c in dataset.metrics)
    result = await run_dataset_query(
        request, dataset, DatasetQuery(dims, metrics, where=where, count_only=True)
    )
    return web.Response(text=str(int(result.rows[0][0])), headers=_headers())


def routes() -> list[RouteDef]:
    def spec(summary: str) -> RouteSpec:
        return RouteSpec("odata", "odata", True, summary)

    return [
        RouteDef("GET", "/odata/", service_document, spec("OData service document")),
        RouteDef("GET", "/odata/$metadata", metadata, spec("OData CSDL metadata (XML)")),
        RouteDef("GET", "/odata/{dataset}/$count", count, spec("Row count of an entity set")),
        RouteDef("GET", "/odata/{dataset}", entity_set, spec("Rows of an entity set, paged")),
    ]
