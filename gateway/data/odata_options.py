"""An OData request's system query options and headers, read and checked.

Option names are case-insensitive (OData 4.01) and may appear once each. ``$select
$filter $orderby $top $skip $count $format $skiptoken`` are served; ``$expand $apply
$search $compute $levels …`` answer 501; anything else, 400. ``OData-MaxVersion`` below
4.0 is refused (this service speaks 4.0 only), ``Prefer: odata.maxpagesize`` is honoured
up to ``odata.max_page_size``, and ``IEEE754Compatible=true`` (in ``Accept`` or
``$format``) asks for Int64 and Decimal values as strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from gateway.config import ODataConfig
from gateway.data.datasets import Dataset, Order
from gateway.data.filter_tree import Node
from gateway.data.odata_filter import parse_filter
from gateway.errors import BadRequest, NotSupported

__all__ = ["FeedQuery", "check_version", "ieee754", "page_size", "read_options"]

_SERVED: Final = frozenset(
    {"$select", "$filter", "$orderby", "$top", "$skip", "$count", "$format", "$skiptoken"}
)
_NOT_IMPLEMENTED: Final = frozenset(
    {"$expand", "$apply", "$search", "$compute", "$levels", "$index", "$schemaversion",
     "$deltatoken", "$id"}
)  # fmt: skip
_MAXPAGESIZE: Final = re.compile(r"(?:^|[,;\s])(?:odata\.)?maxpagesize\s*=\s*\"?(\d+)", re.I)
_VERSION: Final = re.compile(r"\s*(\d+)(?:\.(\d+))?\s*$")


@dataclass(frozen=True, slots=True)
class FeedQuery:
    chosen: tuple[str, ...]
    """The properties served, in order (``$select``, else every field)."""
    where: Node | None
    orders: tuple[Order, ...]
    """The requested order, then the key and every other chosen field: a total order."""
    top: int | None
    skip: int
    with_count: bool
    skiptoken: str | None
    normalised: dict[str, Any]
    """Everything that shapes the rows, canonical: what tokens bind and the cache keys."""


def check_version(request: web.Request) -> None:
    """400 when the client says it cannot read OData 4.0."""
    raw = request.headers.get("OData-MaxVersion")
    if raw is None:
        return
    match = _VERSION.match(raw)
    if match is None:
        raise BadRequest(f"OData-MaxVersion {raw!r} is not a version", param="OData-MaxVersion")
    if (int(match.group(1)), int(match.group(2) or 0)) < (4, 0):
        raise BadRequest(
            f"this service speaks OData 4.0 only, and the client accepts at most {raw.strip()}: "
            "ask for OData 4.0 (Power Query: ODataVersion=4)",
            code="odata_version_not_supported",
            param="OData-MaxVersion",
        )


def page_size(request: web.Request, odata: ODataConfig) -> tuple[int, int | None]:
    """Rows per page, and the ``odata.maxpagesize`` applied when the client asked for one."""
    found = _MAXPAGESIZE.search(",".join(request.headers.getall("Prefer", [])))
    if found is None:
        return odata.page_size, None
    applied = max(1, min(int(found.group(1)), odata.max_page_size))
    return applied, applied


def ieee754(request: web.Request) -> bool:
    wanted = request.headers.get("Accept", "") + ";" + request.query.get("$format", "")
    return "ieee754compatible=true" in wanted.replace(" ", "").lower()


def _options(request: web.Request, key_param: str | None) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in request.query.items():
        if name == key_param:
            continue
        if not name.startswith("$"):
            if name.startswith("@"):
                raise NotSupported("parameter aliases (@name) are not supported by this service")
            raise BadRequest(f"unknown query option {name!r}", param=name)
        option = name.lower()
        if option in _NOT_IMPLEMENTED:
            raise NotSupported(f"{option} is not supported by this service", param=option)
        if option not in _SERVED:
            raise BadRequest(f"unknown query option {name}", param=name)
        if option in options:
            raise BadRequest(f"{option} is given twice", param=option)
        options[option] = value
    return options


def _count(raw: str | None) -> bool:
    if raw is None:
        return False
    if raw.lower() not in ("true", "false"):
        raise BadRequest("$count is true or false", param="$count")
    return raw.lower() == "true"


def _whole(options: dict[str, str], name: str) -> int | None:
    raw = options.get(name)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise BadRequest(f"{name} must be a non-negative integer", param=name)
    return int(raw)


def read_options(request: web.Request, dataset: Dataset, odata: ODataConfig) -> FeedQuery:
    """The request's options over `dataset`; 400 or 501 naming what is wrong."""
    options = _options(request, odata.key_param)
    shape = options.get("$format", "json").split(";")[0].strip().lower()
    if shape not in ("json", "application/json"):
        raise NotSupported("only JSON is served ($format=json)", param="$format")
    fields = dataset.fields
    select: list[str] = []
    for raw in options.get("$select", "").split(","):
        name = raw.strip()
        if name in ("", "*") or name in select:
            continue
        if name not in fields:
            raise BadRequest(f"$select: no property {name!r}", param="$select")
        select.append(name)
    everything = (*dataset.dimensions, *dataset.metrics)
    chosen = tuple(n for n in everything if n in select) if select else everything
    filter_text = options.get("$filter")
    where = None
    if filter_text is not None:
        where = parse_filter(filter_text, set(fields), max_depth=odata.max_filter_depth)
    orders = _orders(options.get("$orderby", ""), chosen, dataset)
    skip = _whole(options, "$skip") or 0
    skiptoken = options.get("$skiptoken")
    if skiptoken is not None and "$skip" in options:
        raise BadRequest("$skip cannot be used with $skiptoken", param="$skip")
    top = _whole(options, "$top")
    with_count = _count(options.get("$count"))
    normalised = {
        "select": list(chosen),
        "filter": filter_text.strip() if filter_text is not None else None,
        "orderby": [[o.field, o.descending] for o in orders],
        "top": top,
        "count": with_count,
    }
    return FeedQuery(chosen, where, orders, top, skip, with_count, skiptoken, normalised)


def _orders(raw: str, chosen: tuple[str, ...], dataset: Dataset) -> tuple[Order, ...]:
    orders: list[Order] = []
    for part in raw.split(","):
        words = part.split()
        if not words:
            continue
        if "(" in part or "/" in part:
            raise NotSupported("$orderby takes properties only here", param="$orderby")
        direction = words[1].lower() if len(words) == 2 else "asc"
        if words[0] not in chosen or len(words) > 2 or direction not in ("asc", "desc"):
            raise BadRequest(f"$orderby: cannot order by {part.strip()!r}", param="$orderby")
        if all(o.field != words[0] for o in orders):
            orders.append(Order(words[0], direction == "desc"))
    # A total order, so keyset pages neither repeat nor skip a row: the declared key when
    # it is served (unique by definition), else every served dimension (unique per row
    # after grouping). Metrics alone make one row.
    declared = tuple(dataset.config.key)
    unique = declared if declared and set(declared) <= set(chosen) else dataset.dimensions
    for name in unique:
        if name in chosen and all(o.field != name for o in orders):
            orders.append(Order(name))
    return tuple(orders)
