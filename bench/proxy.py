"""Tollway against the Python ceiling: a bare aiohttp reverse proxy, same upstream, same run.

Started in one run, each in its own process:

* a fast fake OpenAI upstream (JSON chat answers, short chat SSE streams and short
  Responses API event streams);
* `bare`: an aiohttp reverse proxy with one shared ClientSession and a chunk-by-chunk
  relay on uvloop, doing nothing else;
* `tollway`: the full app, auth, limits, metrics, access log (to /dev/null) and the
  backend's breaker, bulkhead and retries on.

The proxy under test is pinned to core 0; wrk and the upstream to core 1. wrk drives
each proxy at concurrency 1, 8 and 64, interleaved, `--reps` times; then a client
measures streaming time-to-first-byte. Non-streaming chat, streaming chat and
streaming Responses requests are driven by wrk. Printed: req/s, p50/p99, Tollway/bare
ratios, TTFB, and Tollway's peak RSS.

    python -m bench proxy [--duration S] [--reps N] [--streams N] [--kinds chat,stream,responses]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import aiohttp
import orjson
from aiohttp import web

from bench._procs import Server, rss_mb, start

BENCH_KEY = "tw_bench-0123456789abcdefghijklmnopqrstuv"
MODEL = "bench-model"
CHAT_BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
STREAM_BODY = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
)
RESPONSES_BODY = orjson.dumps({"model": MODEL, "input": "Hi", "stream": True})
PROXY_CPU = {0}
LOAD_CPU = {1}

_ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
)


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    return (
        b"data: "
        + orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )
        + b"\n\n"
    )


_STREAM = [_chunk({"role": "assistant", "content": ""}, None)] + [
    _chunk({"content": word}, None) for word in ("Hello", " from", " the", " bench")
]
_STREAM_END = _chunk({}, "stop") + (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,'
    b'"total_tokens":13}}\n\ndata: [DONE]\n\n'
)


def _responses_stream() -> bytes:
    """A Responses API event stream as OpenAI sends it: 10 events, 4 text deltas."""
    base = {"id": "resp_bench", "object": "response", "created_at": 1700000000, "model": MODEL,
            "status": "in_progress", "output": []}  # fmt: skip
    item = {"id": "msg_bench", "type": "message", "role": "assistant", "status": "in_progress",
            "content": []}  # fmt: skip
    where = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    done_item = {**item, "status": "completed",
                 "content": [{"type": "output_text", "text": "Hello from the bench",
                              "annotations": []}]}  # fmt: skip
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}  # fmt: skip
    events = [
        {"type": "response.created", "response": base},
        {"type": "response.in_progress", "response": base},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        *[{"type": "response.output_text.delta", **where, "delta": word, "logprobs": []}
          for word in ("Hello", " from", " the", " bench")],
        {"type": "response.output_text.done", **where, "text": "Hello from the bench"},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed",
         "response": {**base, "status": "completed", "output": [done_item], "usage": usage}},
    ]  # fmt: skip
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: "
        + orjson.dumps({**e, "sequence_number": n}) + b"\n\n"
        for n, e in enumerate(events)
    )  # fmt: skip


_RESPONSES = _responses_stream()


async def upstream_responses(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_RESPONSES)
    await response.write_eof()
    return response


async def upstream_chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' not in body:
        return web.Response(body=_ANSWER, content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in _STREAM:
        await response.write(chunk)
    await response.write(_STREAM_END)
    await response.write_eof()
    return response


def upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream_chat)
    app.router.add_post("/v1/responses", upstream_responses)
    return app


def bare_proxy_app(upstream: str) -> web.Application:
    """The ceiling: forward the body, relay the answer chunk by chunk, nothing else."""
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100), auto_decompress=False
        )
        yield
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with app[session_key].post(
            f"{upstream}{request.path}",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-up"},
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status,
                headers={"Content-Type": upstream_response.headers["Content-Type"]},
            )
            try:
                await response.prepare(request)
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                pass  # wrk closes its connections at the end of a run
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/v1/responses", forward)
    return app


def tollway_app(
    upstream: str,
    log_level: str = "info",
    state: str | None = None,
    extra: dict[str, object] | None = None,
) -> web.Application:
    from gateway.app import create_app
    from gateway.config import parse_config
    from gateway.config.keyhash import hash_key
    from gateway.ops.logs import configure_logging

    configure_logging(log_level, stream=open(os.devnull, "w"))  # noqa: SIM115
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            **({"state": state} if state else {}),
            "limits": {
                "default": ["100000000/minute", "1000000000/hour"],
                "per_ip_authenticated": ["1000000000/hour"],
            },
            "backends": {
                "up": {"type": "openai", "base_url": f"{upstream}/v1", "api_key": "sk-up"}
            },
            "models": {MODEL: {"backend": "up"}},
            "keys": [
                {"id": "bench", "hash": hash_key(BENCH_KEY), "tenant": "b", "scopes": ["llm"]}
            ],
            **(extra or {}),
        },
        env={},
        source="bench",
    )
    return create_app(config)


_KINDS = {
    "chat": ("/v1/chat/completions", CHAT_BODY, "non-streaming chat"),
    "stream": ("/v1/chat/completions", STREAM_BODY, "streaming chat (6 events)"),
    "responses": ("/v1/responses", RESPONSES_BODY, "streaming Responses API (10 events)"),
}
"""Each case wrk drives: path, body, title."""

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_wrk(url: str, concurrency: int, duration: float, script: str) -> dict[str, float]:
    command = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--latency", "-s", script, url,
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, LOAD_CPU),
    )  # fmt: skip
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error answers under load")
    return {"rps": rps, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000}


async def stream_ttfb(url: str, count: int) -> list[float]:
    """Time from sending a streaming request to its first body byte, one at a time."""
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    found: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url, data=STREAM_BODY, headers=headers) as response:
                await response.content.readany()
                found.append(time.perf_counter() - started)
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: status {response.status}")
    found.sort()
    return found


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench proxy")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--streams", type=int, default=300, help="streams for TTFB")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument(
        "--kinds", default="chat,stream,responses", help="which of chat, stream, responses"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="Tollway's log level; 'warning' drops the access log line, to see its cost",
    )
    parser.add_argument(
        "--state",
        help="Tollway's state store, e.g. postgresql://… (default: the SQLite file)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk); skipping")
        return
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two cores to pin proxy and load apart; skipping")
        return
    os.sched_setaffinity(0, LOAD_CPU)
    levels = [int(c) for c in args.concurrency.split(",")]

    upstream = start(upstream_app, cpus=LOAD_CPU)
    servers: dict[str, Server] = {
        "bare": start(bare_proxy_app, upstream.url(), cpus=PROXY_CPU),
        "tollway": start(tollway_app, upstream.url(), args.log_level, args.state, cpus=PROXY_CPU),
    }
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    peak_rss = 0.0
    scripts: dict[str, str] = {}
    kinds = [k for k in args.kinds.split(",") if k in _KINDS]
    for kind in kinds:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(_WRK_SCRIPT.format(body=_KINDS[kind][1].decode(), key=BENCH_KEY))
        scripts[kind] = script.name
    try:
        for server in servers.values():  # warm up pools and code paths
            for kind, script_name in scripts.items():
                run_wrk(server.url(_KINDS[kind][0]), 8, 1, script_name)
        for _ in range(args.reps):
            for kind, script_name in scripts.items():
                for concurrency in levels:
                    for name, server in servers.items():
                        figures = run_wrk(
                            server.url(_KINDS[kind][0]),
                            concurrency,
                            args.duration,
                            script_name,
                        )
                        results.setdefault((kind, name, concurrency), []).append(figures)
                        if name == "tollway":
                            peak_rss = max(peak_rss, rss_mb(server.pid))
        ttfb = {
            name: await stream_ttfb(server.url("/v1/chat/completions"), args.streams)
            for name, server in servers.items()
        }
        peak_rss = max(peak_rss, rss_mb(servers["tollway"].pid))
    finally:
        for script_name in scripts.values():
            os.unlink(script_name)
        for server in [*servers.values(), upstream]:
            server.stop()

    print(
        f"wrk {args.duration:g}s x {args.reps} reps per level, interleaved; proxy on core 0, "
        "load and upstream on core 1; medians over reps; latencies in ms"
    )
    for kind in kinds:
        print(_KINDS[kind][2])
        _print_table(results, kind, levels)
    b50, t50 = _percentile(ttfb["bare"], 50), _percentile(ttfb["tollway"], 50)
    b99, t99 = _percentile(ttfb["bare"], 99), _percentile(ttfb["tollway"], 99)
    print(
        f"streaming time to first byte over {args.streams} sequential streams: "
        f"bare p50 {b50:.3f} ms p99 {b99:.3f} ms, tollway p50 {t50:.3f} ms p99 {t99:.3f} ms "
        f"(Δp50 {t50 - b50:+.3f} ms)"
    )
    print(f"tollway peak RSS under load: {peak_rss:.1f} MB")


def _percentile(sorted_s: list[float], pct: int) -> float:
    return sorted_s[min(len(sorted_s) - 1, len(sorted_s) * pct // 100)] * 1000


def _print_table(
    results: dict[tuple[str, str, int], list[dict[str, float]]], kind: str, levels: list[int]
) -> None:
    header = ("conc", "bare req/s", "tw req/s", "ratio", "bare p50", "tw p50", "Δp50", "bare p99")
    print(" ".join(f"{h:>10}" for h in (*header, "tw p99")))
    for concurrency in levels:
        bare = {k: statistics.median(r[k] for r in results[(kind, "bare", concurrency)])
                for k in ("rps", "p50_ms", "p99_ms")}  # fmt: skip
        full = {k: statistics.median(r[k] for r in results[(kind, "tollway", concurrency)])
                for k in ("rps", "p50_ms", "p99_ms")}  # fmt: skip
        row = (
            f"{concurrency}", f"{bare['rps']:.0f}", f"{full['rps']:.0f}",
            f"{full['rps'] / bare['rps']:.2f}", f"{bare['p50_ms']:.3f}", f"{full['p50_ms']:.3f}",
            f"{full['p50_ms'] - bare['p50_ms']:+.3f}", f"{bare['p99_ms']:.3f}",
            f"{full['p99_ms']:.3f}",
        )  # fmt: skip
        print(" ".join(f"{cell:>10}" for cell in row))
