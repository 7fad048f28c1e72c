"""OData feeds read to the end: a 1,000,000-row DuckDB dataset and a 1,000,000-row Postgres
table, every page followed through its signed keyset ``$skiptoken``, against the backend
producing the same rows in-process, in the same run. Each page's entities are written as
JSON by the database (`gateway.data.odata_json`); the breakdown shows one DuckDB page that
way against fetching its rows into Python and encoding them.

Printed per backend: rows/second through Tollway, the whole read against the in-process
read (goal <= 2x), and the time of the last pages against the first (goal <= 1.2x: keyset
paging keeps page N as cheap as page 1, where OFFSET grows with N). The first and last
pages are fetched again in alternation after the read, so that a busy moment of the
machine weighs on both alike (timed during the read, 5 pages each side moved the ratio
between 0.7x and 1.5x from run to run on a shared machine).

    python -m bench odata [--rows N] [--page N] [--dsn postgresql://...] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import duckdb
import orjson
from aiohttp import web

from bench._procs import start

BENCH_KEY = "tw_bench-odata-0123456789abcdefghijklmno"
COLUMNS = "id, region, product, amount, ordered_at, qty"
DUCKDB_TABLE = """
CREATE TABLE sales (id BIGINT NOT NULL, tenant_id VARCHAR NOT NULL, region VARCHAR,
    product VARCHAR, amount DECIMAL(12, 2), ordered_at TIMESTAMP, qty INTEGER);
INSERT INTO sales SELECT i AS id, 'acme' AS tenant_id,
    (['north', 'south', 'east', 'west'])[1 + i % 4] AS region,
    (['widget', 'gadget', 'gizmo'])[1 + (i * 7) % 3] AS product,
    CAST(5 + ((i * 37) % 50000) / 100.0 AS DECIMAL(12, 2)) AS amount,
    TIMESTAMP '2026-01-01' + to_seconds(i * 13) AS ordered_at, i % 50 AS qty
FROM range(1, {rows} + 1) AS t(i) ORDER BY i
"""
POSTGRES_TABLE = """
CREATE TABLE {table} AS SELECT i::bigint AS id, 'acme'::text AS tenant_id,
    (ARRAY['north', 'south', 'east', 'west'])[1 + i % 4] AS region,
    (ARRAY['widget', 'gadget', 'gizmo'])[1 + (i * 7) % 3] AS product,
    (5 + ((i * 37) % 50000) / 100.0)::numeric(12, 2) AS amount,
    TIMESTAMP '2026-01-01' + make_interval(secs => i * 13) AS ordered_at, (i % 50)::int AS qty
FROM generate_series(1, {rows}) AS i
"""


def dataset(backend: str, table: str) -> dict[str, Any]:
    names = [c.strip() for c in COLUMNS.split(",")]
    return {
        "backend": backend, "table": table, "tenant_column": "tenant_id", "key": ["id"],
        "dimensions": {n: n for n in names}, "metrics": {},
    }  # fmt: skip


def tollway_app(duckdb_path: str, dsn: str | None, table: str, page: int) -> web.Application:
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.config.keyhash import hash_key
    from gateway.ops.logs import configure_logging

    configure_logging("warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    backends: dict[str, Any] = {"duck": {"type": "duckdb", "path": duckdb_path, "timeout_s": 60}}
    datasets = {"duck_sales": dataset("duck", "sales")}
    if dsn is not None:
        backends["pg"] = {"type": "postgres", "dsn": dsn, "timeout_s": 60, "pool": {"max": 2}}
        datasets["pg_sales"] = dataset("pg", table)
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "limits": {
                "default": ["1000000/minute"],
                "routes": {"odata": ["1000000/minute"]},
                "per_ip_authenticated": ["1000000000/hour"],
            },
            "cache": {"routes": []},  # the database every time, not the cache
            "odata": {"page_size": page, "max_page_size": max(page, 20_000)},
            "backends": backends,
            "datasets": datasets,
            "keys": [
                {"id": "bench", "hash": hash_key(BENCH_KEY), "tenant": "acme", "scopes": ["odata"]}
            ],
        },
        env={},
        source="bench",
    )
    return create_app(config)


HEADERS = {"Authorization": f"Bearer {BENCH_KEY}", "Accept-Encoding": "identity"}


async def read_feed(url: str, origin: str) -> tuple[float, list[float], int, list[str]]:
    """Follow every next link; the whole time, each page's time, the rows read, and each
    page's URL."""
    headers = HEADERS
    pages: list[float] = []
    urls: list[str] = []
    rows = 0
    last_id = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        next_url: str | None = url
        while next_url is not None:
            urls.append(next_url)
            began = time.perf_counter()
            async with session.get(next_url, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(body.decode()[:300])
            page = orjson.loads(body)
            pages.append(time.perf_counter() - began)
            values = page["value"]
            if values and values[0]["id"] <= last_id:
                raise RuntimeError("a row came twice or out of order")
            last_id = values[-1]["id"] if values else last_id
            rows += len(values)
            next_url = page.get("@odata.nextLink")
    return time.perf_counter() - started, pages, rows, urls


async def first_and_last(urls: list[str], rounds: int = 7) -> tuple[float, float, int]:
    """Median time of the first full pages and of the last, fetched again in alternation
    once the read is over: a busy moment of the machine then weighs on both alike, where
    timings taken during the read would charge it to whichever pages it fell on."""
    edge = max(1, min(5, len(urls) // 4))
    first_urls = urls[:edge]
    last_urls = urls[-edge - 1 : -1] if len(urls) > edge + 1 else urls[-edge:]
    first: list[float] = []
    last: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for early, late in zip(first_urls, last_urls, strict=True):
                for url, into in ((early, first), (late, last)):
                    began = time.perf_counter()
                    async with session.get(url, headers=HEADERS) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"page answered {response.status}")
                    into.append(time.perf_counter() - began)
    return statistics.median(first), statistics.median(last), edge


async def report(name: str, rows: int, total: float, urls: list[str], direct: float) -> None:
    first, last, edge = await first_and_last(urls)
    print(f"{name}: {rows:,} rows in {len(urls)} pages, {total:.2f} s, {rows / total:,.0f} rows/s")
    print(f"  in-process, same rows: {direct:.2f} s ({rows / direct:,.0f} rows/s)")
    print(f"  whole read / in-process: {total / direct:.2f}x (goal <= 2x)")
    print(
        f"  last pages / first pages ({edge} full pages each, fetched again in turn): "
        f"{first * 1000:.1f} ms "
        f"-> {last * 1000:.1f} ms = {last / first:.2f}x (goal <= 1.2x)"
    )


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench odata")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=5000)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "TOLLWAY_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    schema = f"tw_bench_odata_{os.getpid()}"
    table = f"{schema}.sales"
    admin: asyncpg.Connection | None = None
    if not args.no_postgres:
        try:
            admin = await asyncpg.connect(args.dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            print(f"Postgres at {args.dsn} is not reachable ({type(exc).__name__}): skipped")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sales.duckdb"
        with duckdb.connect(str(path)) as connection:
            connection.execute(DUCKDB_TABLE.format(rows=args.rows))
        if admin is not None:
            await admin.execute(f"CREATE SCHEMA {schema}")
            await admin.execute(POSTGRES_TABLE.format(table=table, rows=args.rows))
            await admin.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
            await admin.execute(f"VACUUM ANALYZE {table}")
        server = start(
            tollway_app, str(path), args.dsn if admin is not None else None, table, args.page
        )
        try:
            await _measure(args, server.url(""), path, admin, table)
        finally:
            server.stop()
            if admin is not None:
                await admin.execute(f"DROP SCHEMA {schema} CASCADE")
                await admin.close()


def page_statement(path: Path, position: int, page: int) -> tuple[str, list[Any]]:
    """The statement Tollway runs for the page after `position` once the next link carries
    the previous page's span: the page's rows written as JSON by DuckDB."""
    from gateway.config import parse_config
    from gateway.data.datasets import DatasetQuery, Order, build_datasets
    from gateway.data.odata_json import page_sql

    config = parse_config(
        {
            "backends": {"duck": {"type": "duckdb", "path": str(path)}},
            "datasets": {"duck_sales": dataset("duck", "sales")},
        },
        env={},
        source="bench",
    )
    sales = build_datasets(config)["duck_sales"]
    with duckdb.connect(str(path), read_only=True) as connection:
        described = connection.execute(f"SELECT {COLUMNS} FROM sales LIMIT 0").description
    sales.types = {str(d[0]): str(d[1]) for d in described or []}
    sales.not_null = frozenset({"id"})
    names = tuple(c.strip() for c in COLUMNS.split(","))
    reach = position + page * 3 // 2 + 2
    query = DatasetQuery(
        names, (), None, "$filter", (Order("id"),), page + 1, 0, (position,), (reach,)
    )
    inner, params = sales.build(query, "acme")
    plan = page_sql(sales, list(names), inner, query.order_by, page, 1 << 26, as_strings=False)
    assert plan is not None
    return plan.sql, params


def breakdown(path: Path, position: int, page: int) -> None:
    """Where a page's time goes, measured in this process on one page mid-table: the
    statement Tollway runs (DuckDB writes the JSON), against fetching the same rows into
    Python and encoding them (what Tollway did before), and the client's decoding."""
    names = [c.strip() for c in COLUMNS.split(",")]
    written_sql, params = page_statement(path, position, page)
    rows_sql = (
        f"SELECT {COLUMNS} FROM sales WHERE tenant_id = $1 AND id > $2 AND id <= $3 "
        "ORDER BY id LIMIT $4"
    )
    timings: dict[str, list[float]] = {
        "written by DuckDB": [],
        "rows": [],
        "encode": [],
        "decode": [],
    }
    with duckdb.connect(str(path), read_only=True) as connection:
        for _ in range(9):
            started = time.perf_counter()
            written = connection.execute(written_sql, params).fetchone()
            timings["written by DuckDB"].append(time.perf_counter() - started)
            started = time.perf_counter()
            fetched = connection.execute(
                rows_sql, ["acme", position, position + page + 1, page + 1]
            ).fetchall()
            timings["rows"].append(time.perf_counter() - started)
            started = time.perf_counter()
            orjson.dumps(
                {"value": [dict(zip(names, row, strict=True)) for row in fetched[:page]]},
                default=lambda v: orjson.Fragment(format(v, "f")),
                option=orjson.OPT_NAIVE_UTC,
            )
            timings["encode"].append(time.perf_counter() - started)
            assert written is not None
            body = "".join(("[", written[0], "]")).encode()
            started = time.perf_counter()
            orjson.loads(body)
            timings["decode"].append(time.perf_counter() - started)
    parts = ", ".join(f"{k} {statistics.median(v) * 1000:.1f} ms" for k, v in timings.items())
    print(f"  one page of {page} rows in this process: {parts} ({len(body) / 1024:.0f} KiB)")
    print("    (written by DuckDB: the statement Tollway runs; rows + encode: the Python way)")


async def _measure(
    args: argparse.Namespace, origin: str, path: Path, admin: Any, table: str
) -> None:
    select = f"?$select={COLUMNS.replace(' ', '')}"
    await read_feed(f"{origin}/odata/duck_sales{select}&$top={args.page * 2}", origin)  # warm up
    total, _pages, rows, urls = await read_feed(f"{origin}/odata/duck_sales{select}", origin)
    sql = f"SELECT {COLUMNS} FROM sales WHERE tenant_id = 'acme' ORDER BY id"
    started = time.perf_counter()
    with duckdb.connect(str(path), read_only=True) as connection:
        fetched = connection.execute(sql).fetchall()
    direct = time.perf_counter() - started
    assert rows == len(fetched) == args.rows, (rows, len(fetched))
    await report("DuckDB", rows, total, urls, direct)
    breakdown(path, args.rows // 2, args.page)
    if admin is None:
        return
    await read_feed(f"{origin}/odata/pg_sales{select}&$top={args.page * 2}", origin)
    total, _pages, rows, urls = await read_feed(f"{origin}/odata/pg_sales{select}", origin)
    started = time.perf_counter()
    records = await admin.fetch(sql.replace("FROM sales", f"FROM {table}"))
    fetched = [tuple(record) for record in records]
    direct = time.perf_counter() - started
    assert rows == len(fetched) == args.rows, (rows, len(fetched))
    await report("Postgres", rows, total, urls, direct)
    await asyncio.sleep(0)
