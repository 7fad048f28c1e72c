"""What the front door costs per request, and each of its stages.

Servers, each in its own process on 127.0.0.1, answer the same trivial JSON route: `bare`
is a plain aiohttp app; `tollway` is the full app (request id, access line, metrics,
usage record in the SQLite state file, errors, body limit, per-IP limit, auth by key, rate
limit, common headers, compression) with the route behind a key; each `-<stage>` variant
is `tollway` with that one stage switched off, so its CPU per request against `tollway`
is what the stage costs. One client process drives all of them in alternating rounds with
the same concurrency. Printed per server: requests/second, latency p50/p99 and the
server's CPU time per request read from /proc, the figure that survives a noisy machine
best; then the whole chain's cost (tollway - bare) and each stage's.

    python -m bench spine [--requests N] [--concurrency C] [--rounds R] [--stages a,b]
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


STAGES = {
    "-log": "the JSON access line (log level warning)",
    "-metrics": "request metrics (counter and histogram children)",
    "-usage": "the usage record (queued, written to SQLite on a thread)",
    "-headers": "the common headers (request id, security, Server-Timing, RateLimit)",
    "-iplimit": "the per-IP limit before auth",
    "-ratelimit": "the per-key and per-address rate limits",
    "-auth": "auth and all that needs a key (the route made public)",
    "-compression": "the compression check",
}


def tollway_app(variant: str = "") -> web.Application:
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.config.keyhash import hash_key
    from gateway.edge import access_log
    from gateway.edge.headers import add_common_headers
    from gateway.ops.logs import configure_logging
    from gateway.routing import RouteSpec, route_specs_key

    level = "warning" if variant == "-log" else "info"
    configure_logging(level, stream=open(os.devnull, "w"))  # noqa: SIM115
    limits: dict[str, object] = {
        "default": ["100000000/minute", "1000000000/hour"],
        "per_ip_authenticated": ["1000000000/hour"],
    }
    if variant == "-iplimit":
        limits["per_ip"] = []
    if variant == "-ratelimit":
        limits = {"default": [], "per_ip_authenticated": []}
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "compression": variant != "-compression"},
            "limits": limits,
            "keys": [
                {"id": "bench", "hash": hash_key(BENCH_KEY), "tenant": "b", "scopes": ["query"]}
            ],
        },
        env={},
        source="bench",
    )
    app = create_app(config)
    route = app.router.add_get("/bench/ping", ping)
    app[route_specs_key][route] = RouteSpec("query", None if variant == "-auth" else "query")
    # Switched off in this server's own process only (each variant runs in its own).
    if variant == "-metrics":
        access_log.RouteMeter.observe = lambda *_: None  # type: ignore[method-assign]
    if variant == "-usage":
        begin = access_log.AccessLog.start

        def start_without_usage(self: access_log.AccessLog, lines: object, _usage: object) -> None:
            begin(self, lines, None)  # type: ignore[arg-type]

        access_log.AccessLog.start = start_without_usage  # type: ignore[method-assign]
    if variant == "-headers":
        app.on_response_prepare.remove(add_common_headers)
    return app


def app_for(kind: str) -> web.Application:
    if kind == "bare":
        return bare_app()
    return tollway_app(kind.removeprefix("tollway"))


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
    parser.add_argument("--stages", default=",".join(STAGES), help="variants to run")
    args = parser.parse_args(argv)

    kinds = ["bare", "tollway", *(f"tollway{s}" for s in args.stages.split(",") if s)]
    servers = {kind: start(app_for, kind) for kind in kinds}
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
        f"server CPU per request {full['cpu_us'] / bare['cpu_us']:.2f}x; "
        f"the whole chain: +{full['cpu_us'] - bare['cpu_us']:.0f} µs per request"
    )
    print("each stage (tollway - tollway without it), µs of CPU per request:")
    for kind in kinds[2:]:
        stage = kind.removeprefix("tollway")
        cost = full["cpu_us"] - median[kind]["cpu_us"]
        print(f"  {stage:<14}{cost:>+7.1f}  {STAGES.get(stage, '')}")
