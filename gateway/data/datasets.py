"""Datasets: a small semantic layer over a table or a query of a data backend.

A dataset names dimensions (expressions to group and filter by) and metrics (aggregates)
in the config. A caller asks for some of each, with filters, order and paging, as data;
the SQL is built as sqlglot expressions, every value bound as a parameter, and the
tenant filter from the caller's key always added, so no request can remove it.

`DatasetQuery` is the structured request both ``/v1/datasets/{name}/query`` and the
OData feeds use.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from gateway.config import Config, ConfigError, DatasetConfig
from gateway.data.sql_safety import DENIED_FUNCTIONS, check_read_only
from gateway.errors import BadRequest

__all__ = [
    "OPERATORS", "Compare", "Condition", "Dataset", "DatasetQuery", "Filter", "Junction",
    "Negation", "Order", "build_datasets", "parse_query",
]  # fmt: skip

Op = Literal[
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "starts_with",
    "ends_with", "is_null", "not_null", "between",
]  # fmt: skip
OPERATORS: Final[frozenset[str]] = frozenset(Op.__args__)  # type: ignore[attr-defined]
MAX_IN_VALUES: Final = 1000
_BASE_ALIAS: Final = "tollway_d"


@dataclass(frozen=True, slots=True)
class Filter:
    field: str
    op: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class Compare:
    """One test of a field; `op` is one of `OPERATORS`."""

    field: str
    op: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class Junction:
    kind: str
    """``and`` or ``or``."""
    left: Condition
    right: Condition


@dataclass(frozen=True, slots=True)
class Negation:
    inner: Condition


Condition = Compare | Junction | Negation


@dataclass(frozen=True, slots=True)
class Order:
    field: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class DatasetQuery:
    dimensions: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    order_by: tuple[Order, ...] = ()
    limit: int | None = None
    offset: int = 0
    where: Condition | None = None
    """A condition tree beside `filters` (OData's $filter, with or/not/parentheses)."""
    count_only: bool = False
    """Answer ``SELECT count(*)`` of the grouped rows instead of the rows (OData $count)."""


@dataclass(frozen=True, slots=True)
class FieldDef:
    name: str
    expression: exp.Expr
    kind: Literal["dimension", "metric"]


@dataclass
class Dataset:
    config: DatasetConfig
    dialect: str
    fields: dict[str, FieldDef]
    base: exp.Expr
    version: str
    types: dict[str, str] = field(default_factory=dict)
    """Each field's backend type, once described (see `describe_query`)."""

    @classmethod
    def from_config(cls, config: DatasetConfig, dialect: str) -> Dataset:
        where = f"datasets.{config.name}"
        if config.table is not None:
            try:
                base: exp.Expr = exp.to_table(config.table, dialect=dialect)
            except (ParseError, ValueError):
                raise BadRequest(f"{where}.table: not a table name") from None
        else:
            assert config.sql is not None
            inner = check_read_only(config.sql, dialect).tree
            base = exp.Subquery(
                this=inner, alias=exp.TableAlias(this=exp.to_identifier(_BASE_ALIAS))
            )
        fields: dict[str, FieldDef] = {}
        for name, text in config.dimensions.items():
            expression = _expression(text, dialect, f"{where}.dimensions.{name}")
            fields[name] = FieldDef(name, expression, "dimension")
        for name, text in config.metrics.items():
            expression = _expression(text, dialect, f"{where}.metrics.{name}")
            fields[name] = FieldDef(name, expression, "metric")
        digest = hashlib.sha256(repr(config).encode()).hexdigest()[:16]
        return cls(config, dialect, fields, base, digest)

    @property
    def dimensions(self) -> list[str]:
        return [f.name for f in self.fields.values() if f.kind == "dimension"]

    @property
    def metrics(self) -> list[str]:
        return [f.name for f in self.fields.values() if f.kind == "metric"]

    def _tree(self, node: Condition, bind: Any) -> exp.Expr:
        if isinstance(node, Compare):
            target = self.fields[node.field]
            item = Filter(node.field, node.op, node.value)
            return _condition(target.expression.copy(), item, bind, self.types.get(node.field))
        if isinstance(node, Negation):
            return exp.Not(this=exp.Paren(this=self._tree(node.inner, bind)))
        left, right = self._tree(node.left, bind), self._tree(node.right, bind)
        joined = exp.and_(left, right) if node.kind == "and" else exp.or_(left, right)
        return exp.Paren(this=joined)

    def _touches_metric(self, node: Condition) -> bool:
        if isinstance(node, Compare):
            return self.fields[node.field].kind == "metric"
        if isinstance(node, Negation):
            return self._touches_metric(node.inner)
        return self._touches_metric(node.left) or self._touches_metric(node.right)

    def describe_query(self) -> tuple[str, list[Any]]:
        """A query returning no rows whose columns are every field, to learn their types."""
        every = DatasetQuery(dimensions=tuple(self.dimensions), metrics=tuple(self.metrics))
        return self.build(every, tenant=None, limit_override=0)

    def build(
        self, query: DatasetQuery, tenant: str | None, *, limit_override: int | None = None
    ) -> tuple[str, list[Any]]:
        """The SQL for `query` in this dataset's dialect, and its bound parameters."""
        params: list[Any] = []

        def bind(value: Any) -> exp.Expr:
            params.append(value)
            return exp.Parameter(this=exp.Literal.number(len(params)))

        selected = [self.fields[n] for n in (*query.dimensions, *query.metrics)]
        select = exp.select(*(f.expression.copy().as_(f.name, quoted=True) for f in selected))
        select = select.from_(self.base.copy())
        conditions: list[exp.Expr] = []
        if self.config.tenant_column is not None and tenant is not None:
            column = exp.column(self.config.tenant_column, quoted=True)
            conditions.append(exp.EQ(this=column, expression=bind(tenant)))
        elif self.config.tenant_column is not None:
            conditions.append(exp.false())  # describing: no tenant, no rows
        having: list[exp.Expr] = []
        for item in query.filters:
            target = self.fields[item.field]
            condition = _condition(target.expression.copy(), item, bind, self.types.get(item.field))
            (having if target.kind == "metric" else conditions).append(condition)
        if query.where is not None:
            tree = self._tree(query.where, bind)
            (having if self._touches_metric(query.where) else conditions).append(tree)
        if conditions:
            select = select.where(exp.and_(*conditions))
        if query.metrics and query.dimensions:
            select = select.group_by(*(self.fields[n].expression.copy() for n in query.dimensions))
        elif query.dimensions and not query.metrics:
            select = select.distinct()
        if having:
            select = select.having(exp.and_(*having))
        if query.count_only:
            counted = exp.select(exp.Count(this=exp.Star()).as_("count")).from_(
                exp.Subquery(this=select, alias=exp.TableAlias(this=exp.to_identifier("tollway_c")))
            )
            return counted.sql(dialect=self.dialect, comments=False), params
        for order in query.order_by:
            select = select.order_by(
                exp.Ordered(this=exp.column(order.field, quoted=True), desc=order.descending)
            )
        limit = limit_override if limit_override is not None else query.limit
        if limit is not None:
            select = select.limit(limit)
        if query.offset:
            select = select.offset(query.offset)
        return select.sql(dialect=self.dialect, comments=False), params


def _expression(text: str, dialect: str, where: str) -> exp.Expr:
    try:
        parsed = sqlglot.parse_one(text, read=dialect)
    except (ParseError, ValueError):
        raise BadRequest(f"{where}: not an SQL expression") from None
    for node in parsed.walk():
        if isinstance(node, exp.Query | exp.Command):
            raise BadRequest(f"{where}: must be an expression, not a query")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in DENIED_FUNCTIONS:
                raise BadRequest(f"{where}: the function {name}() is not allowed")
    return parsed


def _condition(target: exp.Expr, item: Filter, bind: Any, column_type: str | None) -> exp.Expr:
    op, value = item.op, item.value
    coerce = _coercer(column_type)
    if op in ("is_null", "not_null"):
        check = exp.Is(this=target, expression=exp.Null())
        return check if op == "is_null" else exp.Not(this=check)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
            raise BadRequest(
                f"filter on {item.field!r}: '{op}' needs a list of 1 to {MAX_IN_VALUES} values",
                param="filters",
            )
        found = exp.In(this=target, expressions=[bind(coerce(v, item.field)) for v in value])
        return found if op == "in" else exp.Not(this=found)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise BadRequest(
                f"filter on {item.field!r}: 'between' needs [low, high]", param="filters"
            )
        return exp.Between(
            this=target,
            low=bind(coerce(value[0], item.field)),
            high=bind(coerce(value[1], item.field)),
        )
    if op in ("contains", "starts_with", "ends_with"):
        if not isinstance(value, str):
            raise BadRequest(f"filter on {item.field!r}: '{op}' needs a string", param="filters")
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {
            "contains": f"%{escaped}%",
            "starts_with": f"{escaped}%",
            "ends_with": f"%{escaped}",
        }[op]
        text = exp.Cast(this=target, to=exp.DataType.build("text"))
        return exp.Escape(
            this=exp.Like(this=text, expression=bind(pattern)), expression=exp.Literal.string("\\")
        )
    if isinstance(value, list | dict) or value is None:
        raise BadRequest(
            f"filter on {item.field!r}: '{op}' needs one value (use is_null for null)",
            param="filters",
        )
    bound = bind(coerce(value, item.field))
    kinds = {
        "eq": exp.EQ,
        "ne": exp.NEQ,
        "gt": exp.GT,
        "gte": exp.GTE,
        "lt": exp.LT,
        "lte": exp.LTE,
    }
    return kinds[op](this=target, expression=bound)


def _coercer(column_type: str | None) -> Any:
    """Values arrive as JSON; drivers bind typed values. Dates, times and decimals given
    as strings become the type the column has."""
    kind = (column_type or "").lower()

    def coerce(value: Any, name: str) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        try:
            if "timestamp" in kind and isinstance(value, str):
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if kind == "date" and isinstance(value, str):
                return dt.date.fromisoformat(value)
            if ("numeric" in kind or "decimal" in kind) and isinstance(value, str | int | float):
                return decimal.Decimal(str(value))
        except (ValueError, decimal.InvalidOperation):
            raise BadRequest(
                f"filter on {name!r}: {value!r} is not a valid {column_type}", param="filters"
            ) from None
        return value

    return coerce


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
    filters = tuple(_filter(dataset, raw) for raw in _list(body.get("filters", []), "filters"))
    selected = set(dimensions) | set(metrics)
    order = tuple(_order(raw, selected) for raw in _list(body.get("order_by", []), "order_by"))
    limit = body.get("limit", max_rows)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise BadRequest("'limit' must be a non-negative integer", param="limit")
    offset = body.get("offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest("'offset' must be a non-negative integer", param="offset")
    return DatasetQuery(dimensions, metrics, filters, order, min(limit, max_rows), offset)


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


def _filter(dataset: Dataset, raw: Any) -> Filter:
    if not isinstance(raw, dict) or set(raw) - {"field", "op", "value"} or "field" not in raw:
        raise BadRequest('each filter is {"field", "op", "value"}', param="filters")
    name, op = raw["field"], raw.get("op", "eq")
    if not isinstance(name, str) or name not in dataset.fields:
        raise BadRequest(f"filters: {dataset.config.name} has no field {name!r}", param="filters")
    if op not in OPERATORS:
        raise BadRequest(
            f"filters: unknown operator {op!r}; operators: {', '.join(sorted(OPERATORS))}",
            param="filters",
        )
    return Filter(name, op, raw.get("value"))


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


def build_datasets(config: Config) -> dict[str, Dataset]:
    """Every configured dataset, its SQL checked in its backend's dialect; `ConfigError`
    naming the dataset when its definition is wrong."""
    built = {}
    for name, dataset in config.datasets.items():
        try:
            built[name] = Dataset.from_config(dataset, config.backends[dataset.backend].type)
        except BadRequest as exc:
            raise ConfigError(f"datasets.{name}", exc.message) from None
    return built
