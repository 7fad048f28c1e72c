"""The data path: a 10,000-row answer from DuckDB through ``POST /v1/query``, against
DuckDB producing the same rows in-process, in the same run.

Also printed, to show what dominates: the in-process time to encode those rows as
Tollway's JSON answer.

    python -m bench data [--rows N] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import duckdb
from aiohttp import web

from backends.base import Column
from bench._procs import start
from gateway.data.sql_json import encode_result
from gateway.edge.compression import _brotli, _gzip

BENCH_KEY = "tw_bench-data-0123456789abcdefghijklmnop"
SQL = "SELECT order_id, tenant_id, region, product, ordered_at, amount, quantity FROM orders"


def tollway_app(path: str, rows: int) -> web.Application:
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.config.keyhash import hash_key
    from gateway.ops.logs import configure_logging

    configure_logging("info", stream=open(os.devnull, "w"))  # noqa: SIM115
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "limits": {
                "default": ["1000000/minute"],
                "per_ip_authenticated": ["1000000000/hour"],
            },
            "backends": {"wh": {"type": "duckdb", "path": path, "max_rows": rows}},
            "keys": [
                {"id": "bench", "hash": hash_key(BENCH_KEY), "tenant": "b", "scopes": ["query"]}
            ],
        },
        env={},
        source="bench",
    )
    return create_app(config)


def make_warehouse(path: Path, rows: int) -> None:
    from backends.demo_warehouse import DEMO_ORDERS_SQL

    with duckdb.connect(str(path)) as connection:
        connection.execute(DEMO_ORDERS_SQL.replace("range(1, 3001)", f"range(1, {rows + 1})"))


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench data")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.duckdb"
        make_warehouse(path, args.rows)

        direct: list[float] = []
        encode: list[float] = []
        with duckdb.connect(str(path), read_only=True) as connection:
            for _ in range(args.repeat):
                started = time.perf_counter()
                cursor = connection.cursor()
                cursor.execute(f"{SQL} LIMIT {args.rows + 1}")
                description = cursor.description or []
                rows = cursor.fetchall()
                direct.append(time.perf_counter() - started)
                columns = [Column(str(d[0]), str(d[1])) for d in description]
                started = time.perf_counter()
                encode_result(columns, rows, truncated=False)
                encode.append(time.perf_counter() - started)

        server = start(tollway_app, str(path), args.rows)
        through: dict[str, list[float]] = {"identity": [], "gzip": []}
        size: dict[str, int] = {}
        try:
            async with aiohttp.ClientSession(auto_decompress=True) as session:
                for coding, timings in through.items():
                    headers = {
                        "Authorization": f"Bearer {BENCH_KEY}",
                        "Accept-Encoding": coding,
                        "Cache-Control": "no-store",  # the database every time, not the cache
                    }
                    for index in range(args.repeat + 3):
                        started = time.perf_counter()
                        async with session.post(
                            server.url("/v1/query"),
                            json={"backend": "wh", "sql": SQL, "max_rows": args.rows},
                            headers=headers,
                        ) as response:
                            body = await response.content.read()
                            if response.status != 200:
                                raise RuntimeError(body.decode()[:300])
                        if index >= 3:  # the first answers warm the pool and the caches
                            timings.append(time.perf_counter() - started)
                            size[coding] = int(response.headers.get("Content-Length", len(body)))
        finally:
            server.stop()

    body_json = encode_result(columns, rows, truncated=False)
    compressed: dict[str, tuple[float, int]] = {}
    for name, coder in (("gzip", _gzip), ("br", _brotli)):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            out = coder(body_json)
            times.append(time.perf_counter() - started)
        compressed[name] = (statistics.median(times) * 1000, len(out))

    d, e = (statistics.median(x) * 1000 for x in (direct, encode))
    t, tz = (statistics.median(x) * 1000 for x in through.values())
    print(f"{args.rows} rows, {size['identity'] / 1024:.0f} KiB of JSON, median of {args.repeat}")
    print(f"DuckDB in-process (execute + fetchall): {d:8.2f} ms")
    print(f"JSON encoding of those rows:            {e:8.2f} ms")
    print(f"through Tollway's /v1/query (HTTP):     {t:8.2f} ms")
    print(f"  the same, gzip on the wire:           {tz:8.2f} ms, {size['gzip'] / 1024:.0f} KiB")
    print(f"ratio Tollway / in-process: {t / d:.2f}x (gzip on the wire: {tz / d:.2f}x)")
    print(f"compression of that answer ({len(body_json) / 1024:.0f} KiB plain):")
    for name, (ms, size) in compressed.items():
        print(f"  {name:5} {ms:7.2f} ms, {size / 1024:6.0f} KiB ({size / len(body_json):.0%})")
