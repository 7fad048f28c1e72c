"""The JSON body of ``POST /v1/datasets/{name}/query`` read into a `DatasetQuery`.

Filters are ``{"field", "op", "value"}`` objects, all of which must hold. Each becomes a
node of the filter tree (`gateway.data.filter_tree`), so they compile through the same
`FilterCompiler` as OData's ``$filter``: values arrive as JSON and become literals of the
field's own type (a date string for a date column is a date), checked the same way.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any, Final

from gateway.data.datasets import Dataset, DatasetQuery, Order
from gateway.data.filter_tree import (
    EDM_BOOLEAN,
    EDM_DATE,
    EDM_DATETIMEOFFSET,
    EDM_DECIMAL,
    EDM_DOUBLE,
    EDM_INT64,
    EDM_NULL,
    EDM_STRING,
    EDM_TIMEOFDAY,
    Binary,
    Call,
    Field,
    In,
    Junction,
    Literal,
    Negation,
    Node,
)
from gateway.errors import BadRequest

__all__ = ["MAX_FILTERS", "MAX_IN_VALUES", "OPERATORS", "parse_query"]

OPERATORS: Final = frozenset(
    {"eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "starts_with",
     "ends_with", "is_null", "not_null", "between"}
)  # fmt: skip
MAX_IN_VALUES: Final = 1000
MAX_FILTERS: Final = 1000
_COMPARE: Final = {"eq": "eq", "ne": "ne", "gt": "gt", "gte": "ge", "lt": "lt", "lte": "le"}
_MATCH: Final = {"contains": "contains", "starts_with": "startswith", "ends_with": "endswith"}


def parse_query(dataset: Dataset, body: Mapping[str, Any], *, max_rows: int) -> DatasetQuery:
    """A `DatasetQuery` from a request body; 400 naming the first thing that is wrong."""
    known = {"dimensions", "metrics", "filters", "order_by", "limit", "offset"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", param=unknown[0])
    dimensions = _names(body.get("dimensions", []), "dimensions", dataset, "dimension")
    metrics = _names(body.get("metrics", []), "metrics", dataset, "metric")
    if not dimensions and not metrics:
        raise BadRequest("ask for at least one dimension or metric", param="dimensions")
    raw_filters = _list(body.get("filters", []), "filters")
    if len(raw_filters) > MAX_FILTERS:
        raise BadRequest(f"at most {MAX_FILTERS} filters", param="filters")
    nodes = tuple(_filter(dataset, raw) for raw in raw_filters)
    where = None if not nodes else nodes[0] if len(nodes) == 1 else Junction("and", nodes)
    selected = set(dimensions) | set(metrics)
    order = tuple(_order(raw, selected) for raw in _list(body.get("order_by", []), "order_by"))
    limit = body.get("limit", max_rows)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise BadRequest("'limit' must be a non-negative integer", param="limit")
    offset = body.get("offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest("'offset' must be a non-negative integer", param="offset")
    return DatasetQuery(dimensions, metrics, where, "filters", order, min(limit, max_rows), offset)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"'{name}' must be a list", param=name)
    return value


def _names(value: Any, name: str, dataset: Dataset, kind: str) -> tuple[str, ...]:
    names = _list(value, name)
    for item in names:
        found = dataset.fields.get(item) if isinstance(item, str) else None
        if found is None or found.kind != kind:
            raise BadRequest(
                f"{dataset.config.name} has no {kind} {item!r}; {kind}s: "
                + ", ".join(getattr(dataset, f"{kind}s")),
                param=name,
            )
    if len(set(names)) != len(names):
        raise BadRequest(f"'{name}' names a field twice", param=name)
    return tuple(names)


def _filter(dataset: Dataset, raw: Any) -> Node:
    if not isinstance(raw, dict) or set(raw) - {"field", "op", "value"} or "field" not in raw:
        raise BadRequest('each filter is {"field", "op", "value"}', param="filters")
    name, op, value = raw["field"], raw.get("op", "eq"), raw.get("value")
    if not isinstance(name, str) or name not in dataset.fields:
        raise BadRequest(f"filters: {dataset.config.name} has no field {name!r}", param="filters")
    if op not in OPERATORS:
        raise BadRequest(
            f"filters: unknown operator {op!r}; operators: {', '.join(sorted(OPERATORS))}",
            param="filters",
        )
    target = Field(name)
    column_type = dataset.types.get(name)
    if op in ("is_null", "not_null"):
        return Binary("eq" if op == "is_null" else "ne", target, Literal(None, EDM_NULL))
    if op in ("in", "not_in", "between"):
        if op == "between" and (not isinstance(value, list) or len(value) != 2):
            raise BadRequest(f"filter on {name!r}: 'between' needs [low, high]", param="filters")
        if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
            raise BadRequest(
                f"filter on {name!r}: '{op}' needs a list of 1 to {MAX_IN_VALUES} values",
                param="filters",
            )
        values = tuple(_literal(v, column_type, name) for v in value)
        if op == "between":
            low, high = Binary("ge", target, values[0]), Binary("le", target, values[1])
            return Junction("and", (low, high))
        found = In(target, values)
        return found if op == "in" else Negation(found)
    if op in _MATCH:
        if not isinstance(value, str):
            raise BadRequest(f"filter on {name!r}: '{op}' needs a string", param="filters")
        return Call(_MATCH[op], (target, Literal(value, EDM_STRING)))
    if isinstance(value, list | dict) or value is None:
        raise BadRequest(
            f"filter on {name!r}: '{op}' needs one value (use is_null for null)", param="filters"
        )
    return Binary(_COMPARE[op], target, _literal(value, column_type, name))


def _literal(value: Any, column_type: str | None, name: str) -> Literal:
    """A JSON value as a literal of the column's type: dates, times and decimals given
    as strings become the type the column has."""
    if isinstance(value, list | dict) or value is None:
        raise BadRequest(f"filter on {name!r}: values must be plain, not null", param="filters")
    kind = (column_type or "").lower()
    try:
        if isinstance(value, str) and "timestamp" in kind:
            text = value[:-1] + "+00:00" if value[-1:] in "Zz" else value
            return Literal(dt.datetime.fromisoformat(text), EDM_DATETIMEOFFSET)
        if isinstance(value, str) and kind == "date":
            return Literal(dt.date.fromisoformat(value), EDM_DATE)
        if isinstance(value, str) and kind.startswith("time"):
            return Literal(dt.time.fromisoformat(value), EDM_TIMEOFDAY)
        if ("numeric" in kind or "decimal" in kind) and isinstance(value, str | int | float):
            if not isinstance(value, bool):
                return Literal(decimal.Decimal(str(value)), EDM_DECIMAL)
    except (ValueError, decimal.InvalidOperation):
        raise BadRequest(
            f"filter on {name!r}: {value!r} is not a valid {column_type}", param="filters"
        ) from None
    if isinstance(value, bool):
        return Literal(value, EDM_BOOLEAN)
    if isinstance(value, int):
        return Literal(value, EDM_INT64)
    if isinstance(value, float):
        return Literal(value, EDM_DOUBLE)
    return Literal(str(value), EDM_STRING)


def _order(raw: Any, selected: set[str]) -> Order:
    if isinstance(raw, str):
        name, descending = raw.removeprefix("-"), raw.startswith("-")
    elif isinstance(raw, dict) and isinstance(raw.get("field"), str):
        direction = raw.get("direction", "asc")
        if direction not in ("asc", "desc"):
            raise BadRequest("order_by direction is asc or desc", param="order_by")
        name, descending = raw["field"], direction == "desc"
    else:
        raise BadRequest(
            'order_by items are "field", "-field" or {"field", "direction"}', param="order_by"
        )
    if name not in selected:
        raise BadRequest(f"order_by: {name!r} is not among the selected fields", param="order_by")
    return Order(name, descending)
