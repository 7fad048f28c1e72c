"""An OData page's entities written as JSON by the database, in the page's own query.

The page query (`Dataset.build`) is wrapped: its rows are numbered in the page's order,
each becomes its JSON object (`gateway.data.json_columns`, byte for byte what the Python
encoder writes), and one aggregate joins them, so one text value comes back and Python
never builds a row. The same statement says how many rows it found, the sort-key values
of the last row served (where the next page starts), and how many bytes the rows found
take by the measure the backends use (`backends.base.rows_bytes`).

`database_page` answers None, and the caller fetches and encodes the rows in Python as
before, when the page cannot be written in SQL exactly (a column type `json_columns`
does not write, a value it cannot write as Python would, a dialect it does not know),
when the rows found pass ``max_response_bytes`` (the JSON of such a page is never built,
and Python cuts it where it always has: a 502 when not even its first row fits), or when
the database refuses the statement (a mistake in the page's own query, such as a
division by zero in a metric, is then told by the Python path, as before).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from gateway.data.datasets import Dataset, DatasetQuery, Order
from gateway.data.json_columns import column_json, is_sized, quoted
from gateway.data.runner import run_sql
from gateway.edge.principal import principal_key
from gateway.errors import BadRequest
from gateway.resilience.registry import backends_key

__all__ = ["Page", "database_page", "page_sql"]

_log = logging.getLogger("tollway.data")
_ROW_BYTES: Final = 24
"""What `backends.base.rows_bytes` counts for every value, before the length of text."""
_UPPER_ESCAPE: Final = re.compile(r"(?<!\\)((?:\\\\)*)\\u00(0B|0E|0F|1[A-F])")
"""DuckDB writes these control characters as ``\\u000B``; orjson as ``\\u000b``. The
look-behind and the pairs of backslashes keep a literal backslash followed by ``u000B``
(``\\\\u000B`` in JSON) as it is."""


@dataclass(frozen=True, slots=True)
class Page:
    values: str | bytes
    """The JSON array of the page's entities."""
    rows: int
    more: bool
    """Rows follow this page (or it was cut short by ``max_response_bytes``)."""
    position: list[Any] | None
    """The last entity's values of the page's sort keys, when rows follow."""
    fetched: int
    """Rows the page query found (it asks for one more than the page holds)."""
    cut: bool
    """The rows found passed ``max_response_bytes``: the page ends where they fitted."""
    first: Any = None
    """The first entity's value of the first sort key (first pages only)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    answers: dict[str, int]
    """Where each answer is in the statement's one row: ``values``, ``fetched``,
    ``bytes``, ``keys`` (the first of the sort keys), ``first``, ``fallback``."""


def page_sql(
    dataset: Dataset,
    names: list[str],
    inner: str,
    orders: tuple[Order, ...],
    limit: int,
    max_bytes: int,
    *,
    as_strings: bool,
    first: bool = False,
) -> _Plan | None:
    """The page query `inner` (`limit` rows and one more) wrapped to answer one row: the
    JSON of the first `limit` rows (none when the rows found pass `max_bytes`), the rows
    found, their bytes (when some are text), the sort keys of row `limit`, with `first`
    the first sort key of row 1, and whether a served value is one SQL cannot write as
    Python would (when a column may hold one); None when a column cannot be written."""
    if not orders:
        return None
    parts: list[str] = []
    fallbacks: list[str] = []
    sized: list[str] = []
    for index, name in enumerate(names):
        backend_type = dataset.types.get(name)
        rendered = None
        if backend_type is not None:
            rendered = column_json(
                dataset.dialect, backend_type, name, as_strings=as_strings, session=dataset.session
            )
        if backend_type is None or rendered is None:
            return None
        expression, fallback = rendered
        if dataset.nullable(name):
            expression = f"coalesce({expression}, 'null')"
        parts += [f"'{'{' if index == 0 else ','}\"{name}\":'", expression]
        if fallback is not None:
            fallbacks.append(f"({fallback})")
        if is_sized(dataset.dialect, backend_type):
            sized.append(f"coalesce(length({quoted(name)}), 0)")
    parts.append("'}'")
    duckdb = dataset.dialect == "duckdb"
    row = f"concat({', '.join(parts)})" if duckdb else " || ".join(parts)
    order = ", ".join(
        f"{quoted(o.field)} {'DESC' if o.descending else 'ASC'} NULLS LAST" for o in orders
    )
    # DuckDB keeps the order of the page query's rows through a window with an empty
    # OVER (its documented order preservation); Postgres is told the order again.
    window = f'row_number() OVER ({"" if duckdb else f"ORDER BY {order}"}) AS "tollway$n"'
    keep = f'"tollway$n" <= {limit}'
    values = f"string_agg({row}, ',' ORDER BY \"tollway$n\") FILTER (WHERE {keep}"
    answers: dict[str, str] = {"fetched": "count(*)"}
    if sized:  # `rows_bytes` of the rows found: past the budget, their JSON is never built
        counted = f"sum({' + '.join([str(_ROW_BYTES * len(names)), *sized])})"
        window += f', {counted} OVER () AS "tollway$bytes"'
        values += f' AND "tollway$bytes" <= {max_bytes}'
        answers["bytes"] = 'max("tollway$bytes")'
    values += ")"
    answers = {"values": values, **answers}
    for at, o in enumerate(orders):
        answers["keys" if at == 0 else f"key{at}"] = _value_at(o.field, limit, duckdb)
    if first:
        answers["first"] = _value_at(orders[0].field, 1, duckdb)
    if fallbacks:
        answers["fallback"] = f"bool_or({' OR '.join(fallbacks)}) FILTER (WHERE {keep})"
    sql = (
        f"SELECT {', '.join(answers.values())} FROM (SELECT *, {window} "
        f'FROM ({inner}) AS "tollway$p") AS "tollway$w"'
    )
    return _Plan(sql, {name: at for at, name in enumerate(answers)})


async def database_page(
    request: web.Request, dataset: Dataset, query: DatasetQuery, limit: int, *, as_strings: bool
) -> Page | None:
    """The page of `query` (`limit` rows; the query asks for one more) written by the
    database; None when it cannot be written there exactly, or the rows found pass the
    byte budget (Python then cuts the page where it always has)."""
    if not dataset.render_in_database:
        return None
    guard = request.app[backends_key].get(dataset.config.backend)
    max_bytes = guard.config.max_response_bytes
    names = [*query.dimensions, *query.metrics]
    if (limit + 1) * _ROW_BYTES * len(names) > max_bytes:
        return None  # the page may be cut by size: Python cuts it
    inner, params = dataset.build(query, request[principal_key].tenant)
    first = query.after is None
    plan = page_sql(
        dataset, names, inner, query.order_by, limit, max_bytes, as_strings=as_strings, first=first
    )
    if plan is None:
        return None
    try:  # the statement bounds its own answer by the backend's measure (above)
        result = await run_sql(request, guard, plan.sql, params, bounded=False)
    except BadRequest as error:  # told again, or not at all, by the Python path
        _log.debug("page statement refused", extra={"code": error.code})
        return None
    row, at = result.rows[0], plan.answers
    if "bytes" in at and row[at["bytes"]] is not None and row[at["bytes"]] > max_bytes:
        return None
    if "fallback" in at and row[at["fallback"]]:
        return None  # a value SQL cannot write as Python would: Python writes the page
    values, fetched = row[at["values"]], row[at["fetched"]]
    # One copy of the text (a + b + c copies it twice); a backslash, one character, is
    # looked for at memory speed before the longer needle.
    text = "[]" if values is None else "".join(("[", values, "]"))
    if dataset.dialect == "duckdb" and "\\" in text and "\\u00" in text:
        text = _UPPER_ESCAPE.sub(_lower_escape, text)
    more = fetched > limit
    position = list(row[at["keys"] : at["keys"] + len(query.order_by)]) if more else None
    start = row[at["first"]] if first else None
    return Page(text, min(fetched, limit), more, position, fetched, False, start)


def _value_at(name: str, row: int, duckdb: bool) -> str:
    """Column `name`'s value in row `row` (null when it is null or there is no such row)."""
    if duckdb:
        return f'any_value({quoted(name)}) FILTER (WHERE "tollway$n" = {row})'
    return f'(array_agg({quoted(name)}) FILTER (WHERE "tollway$n" = {row}))[1]'


def _lower_escape(match: re.Match[str]) -> str:
    return match.group(1) + "\\u00" + match.group(2).lower()
