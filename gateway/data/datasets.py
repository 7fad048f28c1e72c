"""Datasets: a small semantic layer over a table or a query of a data backend.

A dataset names dimensions (expressions to group and filter by) and metrics (aggregates)
in the config. A caller asks for some of each, with a filter tree, order and paging, as
data (`DatasetQuery`); the SQL is built as sqlglot expressions, every value bound as a
parameter, and the tenant filter from the caller's key always added, so no request can
remove it. Both ``/v1/datasets/{name}/query`` and the OData feeds come through here, and
both compile their filters with the one `FilterCompiler`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway.config import Config, ConfigError, DatasetConfig
from gateway.data.edm import edm_type, is_text, is_zoned
from gateway.data.filter_compiler import Column, FilterCompiler
from gateway.data.filter_tree import EDM_STRING, Junction, Node, fields_of
from gateway.data.keyset import SortKey, seek, through
from gateway.data.sql_safety import DENIED_FUNCTIONS, check_read_only
from gateway.errors import BadRequest

__all__ = ["Dataset", "DatasetQuery", "FieldDef", "Order", "build_datasets"]

_BASE_ALIAS: Final = "tollway_d"


@dataclass(frozen=True, slots=True)
class Order:
    field: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class DatasetQuery:
    dimensions: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    where: Node | None = None
    """The filter tree (OData's $filter, or the JSON filters read into one)."""
    where_param: str = "filters"
    """The request field errors in the filter name."""
    order_by: tuple[Order, ...] = ()
    limit: int | None = None
    offset: int = 0
    after: tuple[Any, ...] | None = None
    """Keyset paging: only rows after these values of `order_by` (nulls sort last)."""
    until: tuple[Any, ...] | None = None
    """Keyset paging: only rows up to these values of `order_by` (see `bounded_pages`)."""
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
    """Each field's backend type, once described (see `gateway.data.schema`)."""
    not_null: frozenset[str] = frozenset()
    """Fields the backend says can never be null, once described."""
    session: dict[str, str] = field(default_factory=dict)
    """The backend session's settings that shape values written as text (DuckDB's
    ``TimeZone``, Postgres's ``extra_float_digits``), once described."""
    render_in_database: bool = True
    """Whether OData pages may be written as JSON by the database
    (`gateway.data.odata_json`); else, and where it cannot, Python writes them."""
    _built: dict[tuple[Any, ...], tuple[str, list[Any]]] = field(default_factory=dict, repr=False)
    """The SQL of recent query shapes (`build`)."""

    @classmethod
    def from_config(cls, config: DatasetConfig, dialect: str) -> Dataset:
        where = f"datasets.{config.name}"
        if config.table is not None:
            try:
                base: exp.Expr = exp.to_table(config.table, dialect=dialect)
            except (ParseError, TokenError, ValueError):
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

    @property
    def key(self) -> list[str]:
        """The entity key: the declared one, or every dimension (unique after grouping)."""
        return list(self.config.key) or self.dimensions

    def nullable(self, name: str) -> bool:
        return name not in self.not_null

    def columns(self) -> dict[str, Column]:
        """What the filter compiler sees of each field: its SQL and Edm type."""
        columns: dict[str, Column] = {}
        for name, definition in self.fields.items():
            backend_type = self.types.get(name)
            edm, _ = edm_type(backend_type)
            expression = definition.expression
            if edm == EDM_STRING and backend_type is not None and not is_text(backend_type):
                expression = exp.Cast(this=expression, to=exp.DataType.build("text"))
            columns[name] = Column(expression, edm, is_zoned(backend_type))
        return columns

    def describe_query(self) -> tuple[str, list[Any]]:
        """A query returning no rows whose columns are every field, to learn their types."""
        every = DatasetQuery(dimensions=tuple(self.dimensions), metrics=tuple(self.metrics))
        return self.build(every, tenant=None, limit_override=0)

    def bounded_pages(self, query: DatasetQuery) -> bool:
        """Whether a page is cheaper found in two steps: first the key of the row that
        follows it (a narrow sort), then the page between two bounds a scan can skip to.

        DuckDB has no ordered index: ``WHERE k > $1 ORDER BY k LIMIT n`` sorts every row
        after the position, so page 1 would cost a whole-table sort. With an upper bound
        too, its zone maps skip all but the row groups the page lies in. Only for pages
        of plain rows (no grouping) ordered by non-null dimensions running one way.
        """
        if self.dialect != "duckdb" or query.metrics or self._distinct_needed(query):
            return False
        fields = [self.fields[o.field] for o in query.order_by]
        return (
            bool(fields)
            and all(f.kind == "dimension" and not self.nullable(f.name) for f in fields)
            and len({o.descending for o in query.order_by}) == 1
        )

    def _distinct_needed(self, query: DatasetQuery) -> bool:
        """Dimensions alone are grouped, unless they hold the declared key (unique already)."""
        declared = set(self.config.key)
        return not (declared and declared <= set(query.dimensions))

    def build(
        self, query: DatasetQuery, tenant: str | None, *, limit_override: int | None = None
    ) -> tuple[str, list[Any]]:
        """The SQL for `query` in this dataset's dialect, and its bound parameters.

        Once the fields are described, the SQL of each query shape is kept (the pages of
        one read differ only in their position, a parameter): the shape is everything but
        the tenant and the position's values, which are filled in per call.
        """
        if limit_override is not None or not self.types:
            return self._build(query, tenant, limit_override=limit_override)
        key = (
            query.dimensions, query.metrics, repr(query.where), query.where_param,
            query.order_by, query.limit, query.offset, _nulls(query.after),
            _nulls(query.until), query.count_only, tenant is None,
        )  # fmt: skip
        built = self._built.get(key)
        if built is None:
            slots = _Slots(query, tenant)
            built = self._build(slots.query, slots.tenant)
            while len(self._built) >= _BUILT_KEPT:
                del self._built[next(iter(self._built))]
            self._built[key] = built
        sql, template = built
        values = _Slots.values(query, tenant)
        return sql, [values[p.index] if isinstance(p, _Slot) else p for p in template]

    def _build(
        self, query: DatasetQuery, tenant: Any, *, limit_override: int | None = None
    ) -> tuple[str, list[Any]]:
        params: list[Any] = []

        def bind(value: Any) -> exp.Expr:
            params.append(value)
            return exp.Parameter(this=exp.Literal.number(len(params)))

        selected = [self.fields[n] for n in (*query.dimensions, *query.metrics)]
        select = exp.select(*(f.expression.copy().as_(f.name, quoted=True) for f in selected))
        select = select.from_(self.base.copy(), copy=False)
        conditions: list[exp.Expr] = []
        if self.config.tenant_column is not None and tenant is not None:
            column = exp.column(self.config.tenant_column, quoted=True)
            conditions.append(exp.EQ(this=column, expression=bind(tenant)))
        elif self.config.tenant_column is not None:
            conditions.append(exp.false())  # describing: no tenant, no rows
        having: list[exp.Expr] = []
        if query.where is not None:
            compiler = FilterCompiler(self.columns(), self.dialect, bind, param=query.where_param)
            where = query.where
            items = where.items if isinstance(where, Junction) and where.kind == "and" else (where,)
            for item in items:
                target = having if self._touches_metric(fields_of(item)) else conditions
                target.append(compiler.condition(item))
        keys = [
            SortKey(self.fields[o.field].expression, o.descending, self.nullable(o.field))
            for o in query.order_by
        ]
        on_metrics = self._touches_metric({o.field for o in query.order_by})
        if query.after is not None:
            (having if on_metrics else conditions).append(seek(keys, query.after, bind))
        if query.until is not None:
            bound = through(keys, query.until, bind)
            if bound is not None:
                (having if on_metrics else conditions).append(bound)
        if conditions:
            select = select.where(exp.and_(*conditions, copy=False), copy=False)
        if query.metrics and query.dimensions:
            select = select.group_by(
                *(self.fields[n].expression.copy() for n in query.dimensions), copy=False
            )
        elif query.dimensions and not query.metrics and self._distinct_needed(query):
            select = select.distinct(copy=False)
        if having:
            select = select.having(exp.and_(*having, copy=False), copy=False)
        if query.count_only:
            counted = exp.select(exp.Count(this=exp.Star()).as_("count")).from_(
                exp.Subquery(
                    this=select, alias=exp.TableAlias(this=exp.to_identifier("tollway_c"))
                ),
                copy=False,
            )
            return counted.sql(dialect=self.dialect, comments=False), params
        for order in query.order_by:
            select = select.order_by(
                exp.Ordered(
                    this=exp.column(order.field, quoted=True),
                    desc=order.descending,
                    nulls_first=False,
                ),
                copy=False,
            )
        limit = limit_override if limit_override is not None else query.limit
        if limit is not None:
            select = select.limit(limit, copy=False)
        if query.offset:
            select = select.offset(query.offset, copy=False)
        return select.sql(dialect=self.dialect, comments=False), params

    def _touches_metric(self, names: set[str]) -> bool:
        return any(self.fields[n].kind == "metric" for n in names if n in self.fields)


_BUILT_KEPT: Final = 256
"""Query shapes whose SQL a dataset keeps (the oldest goes first)."""


class _Slot:
    """A parameter of a kept statement filled per call: the tenant or a position value."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class _Slots:
    """`query` and `tenant` with slots where their values go."""

    def __init__(self, query: DatasetQuery, tenant: str | None) -> None:
        counter = iter(range(1_000_000))

        def slotted(values: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
            if values is None:
                return None
            return tuple(None if v is None else _Slot(next(counter)) for v in values)

        self.tenant = None if tenant is None else _Slot(next(counter))
        after, until = slotted(query.after), slotted(query.until)
        fields = {name: getattr(query, name) for name in query.__dataclass_fields__}
        self.query = DatasetQuery(**{**fields, "after": after, "until": until})

    @staticmethod
    def values(query: DatasetQuery, tenant: str | None) -> list[Any]:
        """The values for the slots, in the order `_Slots` numbered them."""
        values: list[Any] = [] if tenant is None else [tenant]
        for position in (query.after, query.until):
            values += [v for v in position or () if v is not None]
        return values


def _nulls(values: tuple[Any, ...] | None) -> tuple[bool, ...] | None:
    return None if values is None else tuple(v is None for v in values)


def _expression(text: str, dialect: str, where: str) -> exp.Expr:
    try:
        parsed = sqlglot.parse_one(text, read=dialect)
    except (ParseError, TokenError, ValueError, RecursionError):
        raise BadRequest(f"{where}: not an SQL expression") from None
    for node in parsed.walk():
        if isinstance(node, exp.Query | exp.Command):
            raise BadRequest(f"{where}: must be an expression, not a query")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in DENIED_FUNCTIONS:
                raise BadRequest(f"{where}: the function {name}() is not allowed")
    return parsed


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
