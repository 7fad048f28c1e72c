"""DuckDB opened and queried the one way Tollway does it, in whichever process runs it.

The in-process backend and the isolated worker both open their database with
`open_database` and run a statement with `run`; a DuckDB exception becomes a `Failure`
with `failure_of`. This is the only module that imports DuckDB, so it is imported only
where queries run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from backends.base import Column, QueryResult, rows_bytes
from backends.demo_warehouse import create_demo_tables
from backends.duckdb_failures import Failure

__all__ = ["Connection", "open_database", "failure_of", "run"]

Connection = duckdb.DuckDBPyConnection


def open_database(
    path: str,
    *,
    query_threads: int,
    memory_limit: str | None,
    demo: bool,
    temp_directory: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A connection no query can use to reach the host: external access (files, network,
    extensions) off and the configuration locked. A file that exists opens read-only.
    DuckDB spills to `temp_directory` (default: its own choice, ``.tmp`` beside an
    in-memory database). Raises `duckdb.Error` when the database cannot be opened."""
    in_memory = path == ":memory:"
    read_only = not in_memory and Path(path).exists()
    config: dict[str, Any] = {
        "enable_external_access": False,
        "threads": query_threads,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if memory_limit:
        config["memory_limit"] = memory_limit
    if temp_directory:
        config["temp_directory"] = temp_directory
    connection = duckdb.connect(path, read_only=read_only, config=config)
    if demo:
        create_demo_tables(connection)
    # DuckDB shares one database per file within a process: a second backend on the
    # same file finds it locked already.
    locked = connection.execute("SELECT current_setting('lock_configuration')").fetchone()
    if not (locked and locked[0]):
        connection.execute("SET lock_configuration = true")
    return connection


def run(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: list[Any], max_bytes: int | None
) -> QueryResult:
    """Run `sql` on `cursor` and fetch its rows; with `max_bytes`, stop once the rows
    would take more (``too_large``, with the rows that fitted, in order)."""
    cursor.execute(sql, params)
    description = cursor.description or []
    columns = [Column(str(d[0]), str(d[1])) for d in description]
    if max_bytes is None:
        return QueryResult(columns, cursor.fetchall())
    rows: list[Any] = []
    used = 0
    batch = _FIRST_BATCH
    while chunk := cursor.fetchmany(batch):
        size = rows_bytes(chunk)
        if used + size > max_bytes:  # keep the rows that fit, in order, and stop
            for row in chunk:
                used += rows_bytes([row])
                if used > max_bytes:
                    break
                rows.append(row)
            return QueryResult(columns, rows, truncated=True, too_large=True)
        used += size
        rows += chunk
        batch = min(batch * 4, _LAST_BATCH)
    return QueryResult(columns, rows)


_FIRST_BATCH = 2048
_LAST_BATCH = 131072


def failure_of(exc: duckdb.Error) -> Failure:
    """What `exc` says about the query: the caller's mistake, an interrupt, memory, or a
    failure of the database."""
    if isinstance(exc, duckdb.InterruptException):
        return Failure("interrupted", type(exc).__name__)
    if isinstance(exc, duckdb.OutOfMemoryException):
        return Failure("out_of_memory", type(exc).__name__)
    if isinstance(exc, _CALLER_ERRORS):
        return Failure("caller", _kind(exc), str(exc))
    return Failure("failed", type(exc).__name__)


_CALLER_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
                  duckdb.ConversionException, duckdb.InvalidInputException,
                  duckdb.OutOfRangeException, duckdb.PermissionException,
                  duckdb.NotImplementedException)  # fmt: skip


def _kind(exc: duckdb.Error) -> str:
    """The kind of mistake, from the exception's class and the first words DuckDB uses."""
    text = str(exc)
    if isinstance(exc, duckdb.ParserException):
        return "sql_syntax_error"
    if isinstance(exc, duckdb.PermissionException):
        return "permission_denied"
    if isinstance(exc, duckdb.NotImplementedException):
        return "not_supported"
    if "Division by zero" in text:
        return "division_by_zero"
    if isinstance(exc, duckdb.ConversionException | duckdb.InvalidInputException |
                  duckdb.OutOfRangeException):  # fmt: skip
        return "invalid_value"
    if isinstance(exc, duckdb.CatalogException):
        return "function_not_found" if "unction" in text else "table_not_found"
    for marker, kind in _BINDER_KINDS:
        if marker in text:
            return kind
    return "query_error"


_BINDER_KINDS = (
    ("Referenced column", "column_not_found"),
    ("not found in FROM clause", "column_not_found"),
    ("Ambiguous", "ambiguous_column"),
    ("GROUP BY", "grouping_error"),
    ("No function matches", "function_not_found"),
    ("Cannot compare", "type_mismatch"),
    ("Cannot mix", "type_mismatch"),
)
