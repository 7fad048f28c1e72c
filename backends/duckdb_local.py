"""DuckDB in the gateway's own process: queries on a small thread pool, one cursor each,
interrupted when they run out of time or their caller goes away.

Imported only when a backend runs in-process (`backends.duckdb.create`), as it loads
DuckDB.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb

from backends.base import BackendKind, CallContext, Health, QueryResult, sql_health
from backends.duckdb_engine import failure_of, open_database, run
from backends.duckdb_failures import error_of
from gateway.errors import BackendTimeout, BackendUnavailable

__all__ = ["DuckDBBackend"]


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
        try:
            return open_database(
                self.path,
                query_threads=self.query_threads,
                memory_limit=self.memory_limit,
                demo=self.demo,
            )
        except duckdb.Error as exc:
            raise BackendUnavailable(
                f"backend {self.name!r} could not open its database: {type(exc).__name__}",
                backend=self.name,
            ) from None

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
        future = loop.run_in_executor(
            self._executor, functools.partial(run, cursor, sql, list(params), max_bytes)
        )
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
        except duckdb.Error as exc:
            raise error_of(failure_of(exc), sql, self.name) from None
        finally:
            future.add_done_callback(lambda _: cursor.close())
