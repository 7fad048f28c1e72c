"""Embedded DuckDB, opened so that no query can reach the host: the adapter's options.

External access (files, network, extensions) is off and the configuration locked before
the first query; a file database opens read-only unless it is being created. Queries
run on a small thread pool, one cursor each, and are interrupted when they run out of
time or their caller goes away.

Options: ``path`` (a file, or ``:memory:``), ``threads`` (queries at once, default 4),
``query_threads`` (the threads one query may use, DuckDB's own ``threads``; default as many
as ``threads``, but no more than the machine's cores), ``memory_limit`` (e.g. ``"1GB"``),
``demo`` (true: create the demo warehouse in memory), ``isolated`` (true: DuckDB runs in
a child process, `backends.duckdb_isolated`), and for an isolated backend
``worker_memory_mb`` (the child's resident memory past which it is stopped, default 1024;
``memory_limit`` then defaults to half of it) and ``cancel_grace_s`` (how long an
interrupted query may take to stop before its worker is stopped, default 5).

Past the cores, a query's parallel tasks only compete with each other, and every query
pays for waking the workers. A gateway answering many small queries (OData pages) may
set ``query_threads: 1``: on two cores, serving 5,000-row pages took about 8 ms of CPU a
page with one thread and 10 ms with two, for no gain in time; a big scan then runs on
one core.

DuckDB itself is imported only by the process that runs the queries: an isolated
backend's gateway never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from backends.base import Backend, OptionError, reject_unknown_options

__all__ = ["create"]

_OWN_OPTIONS = frozenset(
    {
        "path",
        "threads",
        "query_threads",
        "memory_limit",
        "demo",
        "isolated",
        "worker_memory_mb",
        "cancel_grace_s",
    }
)


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
    threads = _whole(options, "threads", 4, 1, 64)
    query_threads = _whole(options, "query_threads", min(threads, os.cpu_count() or 1), 1, 64)
    memory_limit = options.get("memory_limit")
    if memory_limit is not None and not isinstance(memory_limit, str):
        raise OptionError("memory_limit", 'expected a size such as "1GB"')
    demo = options.get("demo", False)
    if not isinstance(demo, bool):
        raise OptionError("demo", "expected true or false")
    if demo and path != ":memory:":
        raise OptionError("demo", "the demo warehouse lives in memory; leave path unset")
    isolated = options.get("isolated", False)
    if not isinstance(isolated, bool):
        raise OptionError("isolated", "expected true or false")
    worker_memory_mb = _whole(options, "worker_memory_mb", 1024, 64, 1024 * 1024)
    cancel_grace_s = options.get("cancel_grace_s", 5.0)
    if (
        isinstance(cancel_grace_s, bool)
        or not isinstance(cancel_grace_s, int | float)
        or not 0 < cancel_grace_s <= 600
    ):
        raise OptionError("cancel_grace_s", "expected a number of seconds above 0, at most 600")
    if not isolated:
        from backends.duckdb_local import DuckDBBackend

        return DuckDBBackend(
            name,
            path,
            threads=threads,
            query_threads=query_threads,
            memory_limit=memory_limit,
            demo=demo,
        )
    from backends.duckdb_isolated import IsolatedDuckDBBackend
    from backends.duckdb_process import WorkerSettings

    settings = WorkerSettings(
        path=path,
        threads=threads,
        query_threads=query_threads,
        memory_limit=memory_limit or f"{worker_memory_mb // 2}MB",
        demo=demo,
    )
    return IsolatedDuckDBBackend(
        name, settings, memory_cap_mb=worker_memory_mb, cancel_grace_s=float(cancel_grace_s)
    )


def _whole(options: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionError(key, f"expected a whole number from {low} to {high}")
    return value
