"""The cache and the shared limiter, against the bare aiohttp proxy in the same run.

Servers (proxy side pinned to core 0, wrk and the fake upstream to core 1):

* `bare`: the bare reverse proxy of `bench.proxy`, passing every request to the upstream;
* `memory-hit`: Tollway with chat cached in memory, every request a HIT;
* `redis-hit`: the same with the cache in Redis;
* `local-limits` / `redis-limits`: Tollway without cache, limits in-process or in
  Redis, to price the Redis limiter per request.

    python -m bench cache [--duration S] [--reps N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import uuid
from typing import Any

from aiohttp import web

from bench._procs import Server, start
from bench.proxy import (
    _WRK_SCRIPT,
    BENCH_KEY,
    CHAT_BODY,
    LOAD_CPU,
    PROXY_CPU,
    bare_proxy_app,
    run_wrk,
    upstream_app,
)
from bench.proxy import tollway_app as proxy_tollway_app

REDIS_URL = os.environ.get("TOLLWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def tollway_app(upstream: str, extra: dict[str, Any]) -> web.Application:
    """`bench.proxy`'s Tollway with more config (cache, Redis)."""
    return proxy_tollway_app(upstream, "info", None, extra)


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench cache")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or len(os.sched_getaffinity(0)) < 2:
        print("needs wrk (apt-get install wrk) and two cores; skipping")
        return
    os.sched_setaffinity(0, LOAD_CPU)
    prefix = f"tollway-bench:{uuid.uuid4().hex[:8]}:"
    redis = {"redis": REDIS_URL, "redis_prefix": prefix}
    chat_cached = {"routes": ["chat"], "ttl_s": 3600}
    upstream = start(upstream_app, cpus=LOAD_CPU)
    servers: dict[str, Server] = {
        "bare": start(bare_proxy_app, upstream.url(), cpus=PROXY_CPU),
        "memory-hit": start(tollway_app, upstream.url(), {"cache": chat_cached}, cpus=PROXY_CPU),
        "redis-hit": start(
            tollway_app,
            upstream.url(),
            {**redis, "cache": {**chat_cached, "backend": "redis"}},
            cpus=PROXY_CPU,
        ),  # fmt: skip
        "local-limits": start(tollway_app, upstream.url(), {}, cpus=PROXY_CPU),
        "redis-limits": start(tollway_app, upstream.url(), redis, cpus=PROXY_CPU),
    }
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT.format(body=CHAT_BODY.decode(), key=BENCH_KEY))
    try:
        for server in servers.values():
            run_wrk(server.url("/v1/chat/completions"), 8, 1, script.name)  # warm, fill caches
        for _ in range(args.reps):
            for concurrency in (1, 8, 64):
                for name, server in servers.items():
                    figures = run_wrk(
                        server.url("/v1/chat/completions"), concurrency, args.duration, script.name
                    )
                    results.setdefault((name, concurrency), []).append(figures["rps"])
    finally:
        os.unlink(script.name)
        for server in [*servers.values(), upstream]:
            server.stop()
        await _clean(prefix)

    print(f"chat completions, req/s, median of {args.reps} x {args.duration:g}s wrk runs")
    print(f"{'server':>14}" + "".join(f"{f'c={c}':>10}" for c in (1, 8, 64)))
    median = {k: statistics.median(v) for k, v in results.items()}
    for name in servers:
        print(f"{name:>14}" + "".join(f"{median[(name, c)]:>10.0f}" for c in (1, 8, 64)))
    for c in (1, 64):
        memory, bare, shared_hit = (median[(n, c)] for n in ("memory-hit", "bare", "redis-hit"))
        print(
            f"c={c}: memory HIT / bare pass-through {memory / bare:.2f}x, "
            f"redis HIT / memory HIT {shared_hit / memory:.2f}x"
        )
    local, shared = median[("local-limits", 8)], median[("redis-limits", 8)]
    print(
        f"redis limiter cost at c=8: {1e6 / shared - 1e6 / local:+.0f} µs per request "
        f"({shared / local:.2f}x the in-process limiter's req/s)"
    )


async def _clean(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
