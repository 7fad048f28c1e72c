"""Load test for a deployed Tollway: `python -m bench loadtest --url URL --key KEY [...]`.

Users run it against their own deployment before launch. It mixes chat (plain and streamed),
embeddings, search, /v1/query and OData pages in proportions given by --mix, ramps linearly to
--rate requests per second over --ramp seconds, and stops at --duration seconds or --requests
requests, whichever comes first. It prints and saves (--out, JSON) per route class:
requests per second, latency p50/p95/p99, time to first token for streams, errors by status
and limit rejections (429).

Plain aiohttp rather than Locust: no extra dependency, open-loop pacing (a slow gateway does not
slow the offered load down, so queueing shows in the latencies), and the same code is tested.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway.ops.tasks import spawn

__all__ = ["run"]

DEFAULT_MIX = "chat=3,chat_stream=3,embeddings=1,search=1,query=1,odata=1"


@dataclass
class ClassStats:
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in REQUESTS:
            raise SystemExit(f"--mix: unknown class {name!r}; have {', '.join(REQUESTS)}")
        mix[name.strip()] = float(weight or 1)
    if not mix or sum(mix.values()) <= 0:
        raise SystemExit("--mix: give at least one class a positive weight")
    return mix


def chat(args: argparse.Namespace, stream: bool) -> tuple[str, str, dict[str, Any] | None]:
    body = {"model": args.model, "messages": [{"role": "user", "content": "ping"}]}
    if stream:
        body["stream"] = True
    return "POST", "/v1/chat/completions", body


REQUESTS: dict[str, Any] = {
    "chat": lambda a: chat(a, False),
    "chat_stream": lambda a: chat(a, True),
    "embeddings": lambda a: (
        "POST", "/v1/embeddings", {"model": a.embedding_model, "input": "ping"}),
    "search": lambda a: ("POST", "/v1/search", {"query": "tollway load test"}),
    "query": lambda a: ("POST", "/v1/query", {"backend": a.query_backend, "sql": a.sql}),
    "odata": lambda a: ("GET", f"/odata/{a.odata_set}?$top=50", None),
}  # fmt: skip


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def one(
    session: aiohttp.ClientSession, args: argparse.Namespace, name: str, stats: ClassStats
) -> None:
    method, path, body = REQUESTS[name](args)
    started = time.perf_counter()
    try:
        async with session.request(method, args.url.rstrip("/") + path, json=body) as response:
            first: float | None = None
            async for _ in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - started
            stats.statuses[response.status] += 1
            if name == "chat_stream" and first is not None and response.status == 200:
                stats.ttft.append(first)
    except (aiohttp.ClientError, TimeoutError) as exc:
        stats.failures[type(exc).__name__] += 1
        return
    stats.latencies.append(time.perf_counter() - started)


def report(stats: dict[str, ClassStats], elapsed: float) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    out: dict[str, Any] = {"elapsed_s": round(elapsed, 2), "classes": {}}
    for name, s in stats.items():
        total = sum(s.statuses.values()) + sum(s.failures.values())
        out["classes"][name] = {
            "requests": total,
            "rps": round(total / elapsed, 2) if elapsed else 0.0,
            "p50_ms": ms(percentile(s.latencies, 0.50)),
            "p95_ms": ms(percentile(s.latencies, 0.95)),
            "p99_ms": ms(percentile(s.latencies, 0.99)),
            "ttft_p50_ms": ms(percentile(s.ttft, 0.50)),
            "ttft_p99_ms": ms(percentile(s.ttft, 0.99)),
            "statuses": {str(k): v for k, v in sorted(s.statuses.items())},
            "errors": sum(v for k, v in s.statuses.items() if k >= 400 and k != 429)
            + sum(s.failures.values()),
            "limit_rejections": s.statuses.get(429, 0),
            "failures": dict(s.failures),
        }
    out["total_requests"] = sum(c["requests"] for c in out["classes"].values())
    out["rps"] = round(out["total_requests"] / elapsed, 2) if elapsed else 0.0
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench loadtest", description=__doc__)
    p.add_argument("--url", help="Tollway base URL, e.g. https://gateway.example.com")
    p.add_argument("--key", help="API key (Bearer; OData gets it the same way)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"class=weight,... (default {DEFAULT_MIX})")
    p.add_argument("--rate", type=float, default=10.0, help="target requests per second")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds to ramp up to --rate")
    p.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds")
    p.add_argument("--requests", type=int, default=10_000, help="stop after this many requests")
    p.add_argument("--concurrency", type=int, default=200, help="most requests in flight")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--embedding-model", default="text-embedding-3-small")
    p.add_argument("--query-backend", default="wh")
    p.add_argument("--sql", default="SELECT 1 AS n")
    p.add_argument("--odata-set", default="demo", help="OData entity set to page through")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--seed", type=int, default=None)
    return p


async def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if not args.url or not args.key:
        print("loadtest: needs --url and --key (skipped)")
        return
    if args.rate <= 0 or args.duration <= 0 or args.requests <= 0 or args.concurrency <= 0:
        raise SystemExit("--rate, --duration, --requests and --concurrency must be positive")
    mix = parse_mix(args.mix)
    names, weights = list(mix), list(mix.values())
    chooser = random.Random(args.seed)
    stats = {name: ClassStats() for name in names}
    slots = asyncio.Semaphore(args.concurrency)
    pending: set[asyncio.Task[Any]] = set()
    headers = {"Authorization": f"Bearer {args.key}"}
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)

    async def guarded(name: str) -> None:
        async with slots:
            await one(session, args, name, stats[name])

    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector
    ) as session:
        start = time.perf_counter()
        sent = 0
        while sent < args.requests:
            now = time.perf_counter() - start
            if now >= args.duration:
                break
            # Requests due by now under a linear ramp to args.rate over args.ramp seconds.
            ramp = min(args.ramp, now)
            due = args.rate * (ramp * ramp / (2 * args.ramp) if args.ramp else 0) + (
                args.rate * max(0.0, now - args.ramp)
            )
            while sent < min(int(due) + 1, args.requests):
                name = chooser.choices(names, weights)[0]
                spawn(guarded(name), name=f"loadtest-{sent}", owner=pending)
                sent += 1
            await asyncio.sleep(0.005)
        if pending:
            await asyncio.wait(set(pending), timeout=args.timeout)
        elapsed = time.perf_counter() - start
    result = report(stats, elapsed)
    print(f"{'class':<12} {'req':>6} {'req/s':>7} {'p50ms':>8} {'p95ms':>8} {'p99ms':>8} "
          f"{'ttft99':>8} {'errors':>6} {'429':>5}")  # fmt: skip
    for name, c in result["classes"].items():
        print(
            f"{name:<12} {c['requests']:>6} {c['rps']:>7} {c['p50_ms']!s:>8} {c['p95_ms']!s:>8} "
            f"{c['p99_ms']!s:>8} {c['ttft_p99_ms']!s:>8} {c['errors']:>6} "
            f"{c['limit_rejections']:>5}"
        )
    print(
        f"total {result['total_requests']} requests in {result['elapsed_s']} s"
        f" = {result['rps']} req/s"
    )
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, json.dumps(result, indent=2))
