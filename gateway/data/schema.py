"""What the backend says about a dataset's fields: their types and whether they can be
null, and the session setting that shapes values written as text in SQL (DuckDB's time
zone, Postgres's float digits). Asked once per dataset (a query that returns no rows, the
catalog, the setting), then kept.

A field is declared non-null only when that is proven: a plain column the catalog marks
``NOT NULL`` (Postgres ``attnotnull``, DuckDB ``is_nullable = false``), a cast of one, or
a ``count(…)``. Everything else, key columns included, may be null, and says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from sqlglot import exp

from backends.base import QueryResult
from gateway.data.datasets import Dataset
from gateway.errors import TollwayError

__all__ = ["describe"]

Run = Callable[[str, list[Any]], Awaitable[QueryResult]]

_NOT_NULL_SQL: Final = {
    "postgres": (
        "SELECT a.attname FROM pg_catalog.pg_attribute AS a "
        "WHERE a.attrelid = CAST(CAST($1 AS TEXT) AS REGCLASS) AND a.attnum > 0 "
        "AND NOT a.attisdropped AND a.attnotnull"
    ),
    "duckdb": (
        "SELECT column_name FROM duckdb_columns() WHERE NOT is_nullable "
        "AND table_name = $1 AND schema_name = coalesce($2, current_schema()) "
        "AND database_name = coalesce($3, current_database())"
    ),
}


_SESSION_SETTINGS: Final = {"duckdb": "TimeZone", "postgres": "extra_float_digits"}
"""The setting of each backend's session that shapes values written as text in SQL."""


async def describe(dataset: Dataset, run: Run) -> dict[str, str]:
    """Each field's backend type (and, on the way, which fields are never null)."""
    if dataset.types:
        return dataset.types
    sql, params = dataset.describe_query()
    result = await run(sql, params)
    columns = await _not_null_columns(dataset, run)
    dataset.not_null = frozenset(
        name
        for name, definition in dataset.fields.items()
        if _never_null(definition.expression, columns)
    )
    dataset.session = await _session(dataset, run)
    dataset.types.update({c.name: c.type for c in result.columns})
    return dataset.types


async def _session(dataset: Dataset, run: Run) -> dict[str, str]:
    setting = _SESSION_SETTINGS.get(dataset.dialect)
    if setting is None:
        return {}
    try:
        result = await run(f"SELECT current_setting('{setting}')", [])
    except TollwayError:  # unknown: the values it shapes are written in Python
        return {}
    return {setting: str(result.rows[0][0])} if result.rows else {}


async def _not_null_columns(dataset: Dataset, run: Run) -> frozenset[str]:
    table = dataset.base
    sql = _NOT_NULL_SQL.get(dataset.dialect)
    if not isinstance(table, exp.Table) or sql is None:
        return frozenset()  # a query's columns: nothing is proven
    if dataset.dialect == "postgres":
        params: list[Any] = [table.sql(dialect="postgres")]
    else:
        params = [table.name, table.db or None, table.catalog or None]
    try:
        result = await run(sql, params)
    except TollwayError:  # a catalog we may not read proves nothing: everything nullable
        return frozenset()
    return frozenset(str(row[0]) for row in result.rows)


def _never_null(expression: exp.Expr, not_null: frozenset[str]) -> bool:
    node = expression
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    if isinstance(node, exp.Count):
        return True
    return isinstance(node, exp.Column) and node.name in not_null
