"""DuckDB in the gateway's process against DuckDB in a worker process (``isolated``).

Two gateways serve the same DuckDB file, one with the backend in-process and one isolated;
requests go to each in turn, so a busy moment of the machine weighs on both alike.
Printed: the median time of a small ``/v1/query`` (``SELECT 42``) and of a 5,000-row OData
page, isolated against in-process, and each gateway's resident memory after the run (the
isolated one's worker beside it).

    python -m bench isolation [--small N] [--pages N] [--rows N]
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
from aiohttp import web

from bench._procs import Server, children, rss_mb, start

KEY = "tw_bench-isolation-0123456789abcdefghijkl"
HEADERS = {"Authorization": f"Bearer {KEY}", "Accept-Encoding": "identity"}
MODES = ("in-process", "isolated")
SALES = {
    "backend": "duck", "table": "sales", "tenant_column": "tenant_id", "key": ["id"],
    "dimensions": {n: n for n in ("id", "region", "product", "amount", "ordered_at", "qty")},
    "metrics": {},
}  # fmt: skip
"""`bench.odata`'s dataset, written out: the gateways' processes import this module, and
`bench.odata` would load DuckDB into both."""


def isolation_app(path: str, isolated: bool) -> web.Application:
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.config.keyhash import hash_key
    from gateway.ops.logs import configure_logging

    configure_logging("warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    backend = {"type": "duckdb", "path": path, "timeout_s": 60, "threads": 1,
               "isolated": isolated}  # fmt: skip
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "limits": {
                "default": ["1000000/minute"],
                "routes": {"odata": ["1000000/minute"]},
                "per_ip_authenticated": ["1000000000/hour"],
            },
            "cache": {"routes": []},  # the database every time, not the cache
            "odata": {"page_size": 5000},
            "backends": {"duck": backend},
            "datasets": {"sales": SALES},
            "keys": [
                {
                    "id": "bench",
                    "hash": hash_key(KEY),
                    "tenant": "acme",
                    "scopes": ["query", "odata"],
                }
            ],
        },  # fmt: skip
        env={},
        source="bench",
    )
    return create_app(config)


async def _timed(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> float:
    began = time.perf_counter()
    async with session.request(method, url, headers=HEADERS, **kw) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {body[:200]!r}")
    return time.perf_counter() - began


async def _ready(session: aiohttp.ClientSession, server: Server) -> None:
    for _ in range(600):
        try:
            async with session.get(server.url("/health/ready")) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not become ready")


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench isolation")
    parser.add_argument("--small", type=int, default=1000, help="small queries per gateway")
    parser.add_argument("--pages", type=int, default=100, help="5,000-row pages per gateway")
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args(argv)
    import duckdb  # here: not in the gateways, which import this module

    from bench.odata import DUCKDB_TABLE

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sales.duckdb"
        with duckdb.connect(str(path)) as connection:
            connection.execute(DUCKDB_TABLE.format(rows=args.rows))
        servers = {mode: start(isolation_app, str(path), mode == "isolated") for mode in MODES}
        try:
            await _measure(args, servers)
        finally:
            for server in servers.values():
                server.stop()


async def _measure(args: argparse.Namespace, servers: dict[str, Server]) -> None:
    small: dict[str, list[float]] = {mode: [] for mode in MODES}
    pages: dict[str, list[float]] = {mode: [] for mode in MODES}
    query = {"backend": "duck", "sql": "SELECT 42 AS answer"}
    async with aiohttp.ClientSession() as session:
        for server in servers.values():
            await _ready(session, server)
        rss_start = {mode: rss_mb(s.pid) for mode, s in servers.items()}
        for number in range(args.small + 50):  # the first 50 warm up
            for mode, server in servers.items():
                took = await _timed(session, "POST", server.url("/v1/query"), json=query)
                if number >= 50:
                    small[mode].append(took)
        for number in range(args.pages + 5):
            for mode, server in servers.items():
                took = await _timed(session, "GET", server.url("/odata/sales"))
                if number >= 5:
                    pages[mode].append(took)
    base, isolated = MODES
    for label, times in (("small /v1/query", small), ("5,000-row OData page", pages)):
        a, b = (statistics.median(times[m]) * 1000 for m in (base, isolated))
        print(f"{label}: in-process {a:.2f} ms, isolated {b:.2f} ms (median): {b / a:.2f}x")
    for mode, server in servers.items():
        workers = [rss_mb(child) for child in children(server.pid)]
        beside = f", worker {sum(workers):.1f} MB" if workers else ""
        print(f"{mode} gateway RSS {rss_start[mode]:.1f} MB at start, "
              f"{rss_mb(server.pid):.1f} MB after{beside}")  # fmt: skip
