"""Embedded DuckDB, opened so that no query can reach the host.

External access (files, network, extensions) is off and the configuration locked before
the first query; a file database opens read-only unless it is being created. Queries
run on a small thread pool, one cursor each, and are interrupted when they run out of
time or their caller goes away.

Options: ``path`` (a file, or ``:memory:``), ``threads`` (queries at once, default 4),
``query_threads`` (the threads one query may use, DuckDB's own ``threads``; default as many
as ``threads``, but no more than the machine's cores), ``memory_limit`` (e.g. ``"1GB"``),
``demo`` (true: create the demo warehouse in memory).

Past the cores, a query's parallel tasks only compete with each other, and every query
pays for waking the workers. A gateway answering many small queries (OData pages) may
set ``query_threads: 1``: on two cores, serving 5,000-row pages took about 8 ms of CPU a
page with one thread and 10 ms with two, for no gain in time; a big scan then runs on
one core.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb

from backends.base import (
    Backend,
    BackendKind,
    CallContext,
    Column,
    Health,
    OptionError,
    QueryResult,
    reject_unknown_options,
    rows_bytes,
    sql_health,
)
from backends.demo_warehouse import create_demo_tables
from backends.sql_errors import caller_error
from gateway.errors import BackendTimeout, BackendUnavailable

__all__ = ["DuckDBBackend", "create"]

_OWN_OPTIONS = frozenset({"path", "threads", "query_threads", "memory_limit", "demo"})


def create(
    name: str,
    options: Mapping[str, Any],
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_response_bytes: int = 64 * 1024 * 1024,
) -> Backend:
    reject_unknown_options(options, _OWN_OPTIONS, "duckdb")
    path = options.get("path", ":memory:")
    if not isinstance(path, str) or not path:
        raise OptionError("path", "expected a file path or :memory:")
    threads = options.get("threads", 4)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise OptionError("threads", "expected a whole number from 1 to 64")
    query_threads = options.get("query_threads", min(threads, os.cpu_count() or 1))
    if (
        isinstance(query_threads, bool)
        or not isinstance(query_threads, int)
        or not 1 <= query_threads <= 64
    ):
        raise OptionError("query_threads", "expected a whole number from 1 to 64")
    memory_limit = options.get("memory_limit")
    if memory_limit is not None and not isinstance(memory_limit, str):
        raise OptionError("memory_limit", 'expected a size such as "1GB"')
    demo = options.get("demo", False)
    if not isinstance(demo, bool):
        raise OptionError("demo", "expected true or false")
    if demo and path != ":memory:":
        raise OptionError("demo", "the demo warehouse lives in memory; leave path unset")
    return DuckDBBackend(
        name,
        path,
        threads=threads,
        query_threads=query_threads,
        memory_limit=memory_limit,
        demo=demo,
    )


class DuckDBBackend:
    kind: BackendKind = "sql"
    dialect = "duckdb"

    def __init__(
        self,
        name: str,
        path: str,
        *,
        threads: int,
        memory_limit: str | None,
        demo: bool,
        query_threads: int | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.threads = threads
        self.query_threads = threads if query_threads is None else query_threads
        self.memory_limit = memory_limit
        self.demo = demo
        self._connection: duckdb.DuckDBPyConnection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"duckdb-{self.name}")
        loop = asyncio.get_running_loop()
        self._connection = await loop.run_in_executor(self._executor, self._open)

    def _open(self) -> duckdb.DuckDBPyConnection:
        in_memory = self.path == ":memory:"
        read_only = not in_memory and Path(self.path).exists()
        config: dict[str, Any] = {
            "enable_external_access": False,
            "threads": self.query_threads,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
        if self.memory_limit:
            config["memory_limit"] = self.memory_limit
        try:
            connection = duckdb.connect(self.path, read_only=read_only, config=config)
        except duckdb.Error as exc:
            raise BackendUnavailable(
                f"backend {self.name!r} could not open its database: {type(exc).__name__}",
                backend=self.name,
            ) from None
        if self.demo:
            create_demo_tables(connection)
        # DuckDB shares one database per file within a process: a second backend on the
        # same file finds it locked already.
        locked = connection.execute("SELECT current_setting('lock_configuration')").fetchone()
        if not (locked and locked[0]):
            connection.execute("SET lock_configuration = true")
        return connection

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.interrupt()
            self._connection.close()
            self._connection = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def health(self) -> Health:
        return await sql_health(self)

    async def query(
        self,
        sql: str,
        params: Sequence[Any],
        ctx: CallContext,
        *,
        timeout_s: float,
        max_bytes: int | None = None,
    ) -> QueryResult:
        if self._connection is None or self._executor is None:
            raise BackendUnavailable(f"backend {self.name!r} is not started", backend=self.name)
        cursor = self._connection.cursor()
        loop = asyncio.get_running_loop()
        run = functools.partial(_run, cursor, sql, list(params), max_bytes)
        future = loop.run_in_executor(self._executor, run)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            cursor.interrupt()
            raise BackendTimeout(
                f"the query ran longer than {timeout_s:g}s and was stopped", backend=self.name
            ) from None
        except asyncio.CancelledError:
            cursor.interrupt()  # the caller is gone: stop the work it asked for
            raise
        except duckdb.InterruptException:
            raise BackendTimeout("the query was interrupted", backend=self.name) from None
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
                duckdb.ConversionException, duckdb.InvalidInputException,
                duckdb.OutOfRangeException, duckdb.PermissionException,
                duckdb.NotImplementedException) as exc:  # fmt: skip
            raise caller_error(_kind(exc), str(exc), sql) from None
        except duckdb.Error as exc:
            raise BackendUnavailable(
                f"backend {self.name!r} failed: {type(exc).__name__}", backend=self.name
            ) from None
        finally:
            future.add_done_callback(lambda _: cursor.close())


def _run(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: list[Any], max_bytes: int | None
) -> QueryResult:
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
