"""What the middleware chain costs per request.

Two servers, each in its own process on 127.0.0.1, answer the same trivial JSON route:
`bare` is a plain aiohttp app; `tollway` is the full app (request id, access log and
metrics, errors, body limit, auth by key, rate limit, common headers) with the route
behind a key; `tollway-nolog` is the same at log level warning, to show what the JSON
access line costs; `tollway-nofront` is `tollway` with the front door's per-IP limits and
compression off, to show what they cost. One client process drives all of them in
alternating rounds with the same concurrency. Printed per server: requests/second,
latency p50/p99 and the server's CPU time per request read from /proc, the figure that
survives a noisy machine best.

    python -m bench spine [--requests N] [--concurrency C] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import aiohttp
from aiohttp import web

from bench._procs import cpu_seconds, start

BENCH_KEY = "tw_bench-0123456789abcdefghijklmnopqrstuv"
PAYLOAD = {"ok": True, "items": [1, 2, 3]}


async def ping(request: web.Request) -> web.Response:
    return web.json_response(PAYLOAD)


def bare_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/bench/ping", ping)
    return app


def tollway_app(log_level: str = "info", front_door: bool = True) -> web.Application:
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.config.keyhash import hash_key
    from gateway.ops.logs import configure_logging
    from gateway.routing import RouteSpec, route_specs_key

    configure_logging(log_level, stream=open(os.devnull, "w"))  # noqa: SIM115
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "compression": front_door},
            "limits": {
                "default": ["100000000/minute", "1000000000/hour"],
                "per_ip_authenticated": ["1000000000/hour"] if front_door else [],
                **({} if front_door else {"per_ip": []}),
            },
            "keys": [
                {"id": "bench", "hash": hash_key(BENCH_KEY), "tenant": "b", "scopes": ["query"]}
            ],
        },
        env={},
        source="bench",
    )
    app = create_app(config)
    route = app.router.add_get("/bench/ping", ping)
    app[route_specs_key][route] = RouteSpec("query", "query")
    return app


def app_for(kind: str) -> web.Application:
    if kind == "bare":
        return bare_app()
    return tollway_app(
        "warning" if kind == "tollway-nolog" else "info", front_door=kind != "tollway-nofront"
    )


async def drive(port: int, requests: int, concurrency: int) -> list[float]:
    url = f"http://127.0.0.1:{port}/bench/ping"
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    latencies: list[float] = []
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"status {response.status}")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench spine")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    servers = {
        kind: start(app_for, kind)
        for kind in ("bare", "tollway", "tollway-nolog", "tollway-nofront")
    }
    try:
        results: dict[str, dict[str, list[float]]] = {
            kind: {"rps": [], "p50": [], "p99": [], "cpu_us": []} for kind in servers
        }
        for server in servers.values():
            await drive(server.port, 300, args.concurrency)  # warm up
        for _ in range(args.rounds):
            for kind, server in servers.items():
                cpu_before = cpu_seconds(server.pid)
                started = time.perf_counter()
                latencies = await drive(server.port, args.requests, args.concurrency)
                elapsed = time.perf_counter() - started
                cpu = cpu_seconds(server.pid) - cpu_before
                latencies.sort()
                results[kind]["rps"].append(args.requests / elapsed)
                results[kind]["p50"].append(latencies[len(latencies) // 2] * 1000)
                results[kind]["p99"].append(latencies[int(len(latencies) * 0.99)] * 1000)
                results[kind]["cpu_us"].append(cpu / args.requests * 1e6)
    finally:
        for server in servers.values():
            server.stop()

    median = {kind: {k: statistics.median(v) for k, v in r.items()} for kind, r in results.items()}
    print(
        f"{args.rounds} rounds x {args.requests} GET, concurrency {args.concurrency}, "
        "medians over rounds"
    )
    print(f"{'server':<15}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'server CPU µs/req':>20}")
    for kind, figures in median.items():
        print(
            f"{kind:<15}{figures['rps']:>10.0f}{figures['p50']:>10.2f}"
            f"{figures['p99']:>10.2f}{figures['cpu_us']:>20.0f}"
        )
    bare, full = median["bare"], median["tollway"]
    print(
        f"tollway/bare: throughput {full['rps'] / bare['rps']:.2f}x, "
        f"server CPU per request {full['cpu_us'] / bare['cpu_us']:.2f}x "
        f"(+{full['cpu_us'] - bare['cpu_us']:.0f} µs for the middleware chain, "
        f"{full['cpu_us'] - median['tollway-nolog']['cpu_us']:.0f} µs of it the access log line)"
    )
