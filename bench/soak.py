"""A long mixed load against one gateway process: does its memory stay flat?

``python -m bench soak [--duration 600] [--rate 100]`` starts a fake OpenAI upstream and
``tollway serve`` (usage recorded in a SQLite state file; the DuckDB demo warehouse as a
data backend), then sends an open-loop mix at ``--rate`` requests per second: chat JSON,
chat streams, a dataset query and an OData page. Every 10 s it prints the gateway's RSS,
the requests sent, errors and usage rows written; at the end, RSS at start, after the
warm-up (``--warmup``, default 30 s) and at the end, the growth after warm-up, req/s,
errors, and the usage rows against the requests answered (after a SIGTERM, so the last
rows are flushed).

``--data postgres`` serves the dataset and the OData feed from a scratch database on the
machine's Postgres (``--dsn``, default ``postgresql://postgres@127.0.0.1:5432/postgres``;
the database is dropped at the end) instead of the in-process DuckDB demo warehouse:
DuckDB alone holds some 60 MB in the gateway's process (its library, its instance, its
buffers), which no setting of Tollway's removes.

``--tracemalloc DIR`` runs the gateway under ``tracemalloc`` and writes, every 30 s, the
allocation sites that grew most since the warm-up to ``DIR/growth-<t>.txt``: how the
memory bound was found (not by guessing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._procs import children, rss_mb, start
from bench.rolling import KEY, MODEL, _free_port, upstream_app

__all__ = ["run"]

ROOT = Path(__file__).resolve().parent.parent
_MAX_IN_FLIGHT = 500
_TRACE_MAIN = """
import gc, os, sys, threading, time, tracemalloc
tracemalloc.start(int(os.environ.get("SOAK_TRACE_FRAMES", "6")))
folder, warmup = os.environ["SOAK_TRACE_DIR"], float(os.environ["SOAK_WARMUP_S"])
def watch():
    time.sleep(warmup)
    ignore = [tracemalloc.Filter(False, path)
              for path in (tracemalloc.__file__, "<frozen *>", "*/linecache.py")]
    gc.collect()
    base = tracemalloc.take_snapshot().filter_traces(ignore)
    while True:
        time.sleep(30)
        gc.collect()
        now = tracemalloc.take_snapshot().filter_traces(ignore)
        current, peak = tracemalloc.get_traced_memory()
        with open(os.path.join(folder, f"growth-{int(time.monotonic())}.txt"), "w") as out:
            out.write(f"traced {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB\\n")
            out.write("\\n== by line (innermost frame), since the warm-up\\n")
            for stat in now.compare_to(base, "lineno")[:25]:
                out.write(f"{stat}\\n")
            out.write("\\n== by traceback, since the warm-up\\n")
            for stat in now.compare_to(base, "traceback")[:12]:
                out.write(f"\\n{stat}\\n")
                out.write("\\n".join(stat.traceback.format(limit=12)) + "\\n")
threading.Thread(target=watch, daemon=True).start()
from gateway.cli import main
sys.exit(main(["serve", "--config", sys.argv[1]]))
"""


_PG_ORDERS = """
CREATE TABLE orders AS
SELECT i AS order_id,
       CASE WHEN i % 3 = 0 THEN 'globex' ELSE 'acme' END AS tenant_id,
       (ARRAY['north', 'south', 'east', 'west'])[1 + i % 4] AS region,
       (ARRAY['widget', 'gadget', 'gizmo'])[1 + (i * 7) % 3] AS product,
       TIMESTAMP '2026-01-01' + make_interval(hours => (i * 97) % (181 * 24)) AS ordered_at,
       CAST(5 + ((i * 37) % 50000) / 100.0 AS NUMERIC(12, 2)) AS amount
FROM generate_series(1, 3000) AS t(i)
"""


async def scratch_postgres(dsn: str) -> str:
    """A new database holding the demo orders; its URL."""
    import uuid

    import asyncpg

    name = f"tollway_soak_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = dsn.rsplit("/", 1)[0] + f"/{name}"
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(_PG_ORDERS)
    finally:
        await connection.close()
    return url


async def drop_postgres(dsn: str, url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await admin.close()


def gateway_config(
    folder: Path,
    port: int,
    upstream: str,
    data_dsn: str | None = None,
    *,
    in_process: bool = False,
) -> dict[str, Any]:
    from gateway.config.defaults import embedded_config_data
    from gateway.config.keyhash import hash_key

    # The demo warehouse as the embedded default (`make run`) configures it.
    # (isolated in a worker process; `--data duckdb-in-process` runs DuckDB in the gateway)
    demo = embedded_config_data({"TOLLWAY_DEMO_KEY": KEY}).data["backends"]["demo"]
    if in_process:
        demo = {k: v for k, v in demo.items() if k not in ("isolated", "worker_memory_mb")}
    warehouse: dict[str, Any] = (
        {"type": "postgres", "dsn": data_dsn, "pool": {"min": 1, "max": 4}} if data_dsn else demo
    )
    return {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
        "state": f"sqlite:///{folder / 'state.db'}",
        "state_spill_dir": str(folder / "spill"),
        "limits": {"default": ["1000000/minute"], "per_ip": ["1000000/minute"],
                   "per_ip_authenticated": ["1000000/minute"]},
        "backends": {
            "up": {"type": "openai", "base_url": f"{upstream}/v1", "api_key": "sk-up"},
            "wh": warehouse,
        },
        "models": {MODEL: {"backend": "up"}},
        "datasets": {
            "orders": {
                "backend": "wh", "table": "orders", "tenant_column": "tenant_id",
                "dimensions": {"region": "region", "product": "product",
                               "day": "CAST(ordered_at AS DATE)"},
                "metrics": {"revenue": "sum(amount)", "orders": "count(*)"},
            }
        },
        "keys": [{"id": "soak", "hash": hash_key(KEY), "tenant": "acme",
                  "scopes": ["llm", "query", "odata"]}],
    }  # fmt: skip


REQUESTS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("chat", "POST", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("chat", "POST", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}),
    ("stream", "POST", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}),
    ("stream", "POST", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "y"}], "stream": True}),
    ("dataset", "POST", "/v1/datasets/orders/query",
     {"dimensions": ["region"], "metrics": ["revenue", "orders"]}),
    ("odata", "GET", "/odata/orders?$select=region,day,revenue&$top=200", None),
]  # fmt: skip
"""The mix, in turn: 2 chat JSON, 2 streams, 1 dataset query, 1 OData page."""


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.answered = 0
        self.reached = 0
        """Requests the gateway answered with any status: each one is a usage row."""
        self.errors: Counter[str] = Counter()


async def _one(
    session: aiohttp.ClientSession, base: str, turn: int, tally: Tally, headers: dict[str, str]
) -> None:
    kind, method, path, body = REQUESTS[turn % len(REQUESTS)]
    # every answer differs (no cache hit): the load reaches the backends
    if kind == "dataset" and body is not None:
        body = {**body, "limit": 100 + turn % 997}
    elif kind == "chat" and body is not None:
        body = {**body, "user": f"u{turn}"}
    elif kind == "odata":
        path = path.replace("$top=200", f"$top={100 + turn % 997}")
    tally.sent += 1
    try:
        async with session.request(
            method, base + path, json=body, headers={**headers, "Cache-Control": "no-store"}
        ) as response:
            payload = await response.read()
            tally.reached += 1
            if response.status != 200:
                tally.errors[f"{kind} {response.status}"] += 1
            elif kind == "stream" and not payload.endswith(b"data: [DONE]\n\n"):
                tally.errors[f"{kind} cut"] += 1
            else:
                tally.answered += 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        tally.errors[f"{kind} {type(exc).__name__}"] += 1


def anon_mb(pid: int) -> float:
    """The process's anonymous memory (heap, arenas): RSS without mapped files."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _usage_rows(state: Path) -> int:
    try:
        with sqlite3.connect(state, timeout=5) as connection:
            return int(connection.execute("SELECT count(*) FROM tollway_usage").fetchone()[0])
    except sqlite3.Error:
        return -1


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak")
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--tracemalloc", metavar="DIR", default=None)
    parser.add_argument(
        "--data", choices=("duckdb", "duckdb-in-process", "postgres"), default="duckdb"
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    args.data_dsn = await scratch_postgres(args.dsn) if args.data == "postgres" else None
    upstream = start(upstream_app)
    try:
        with tempfile.TemporaryDirectory(prefix="tollway-soak-") as temp:
            await _soak(args, Path(temp), upstream.url())
    finally:
        upstream.stop()
        if args.data_dsn:
            await drop_postgres(args.dsn, args.data_dsn)


def _gateway_command(
    args: argparse.Namespace, folder: Path, port: int, upstream: str
) -> tuple[list[str], dict[str, str]]:
    config = folder / "tollway.yaml"
    config.write_text(
        yaml.safe_dump(
            gateway_config(
                folder, port, upstream, args.data_dsn, in_process=args.data == "duckdb-in-process"
            )
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    if args.tracemalloc:
        Path(args.tracemalloc).mkdir(parents=True, exist_ok=True)
        env |= {"SOAK_TRACE_DIR": args.tracemalloc, "SOAK_WARMUP_S": str(args.warmup)}
        command = [sys.executable, "-c", _TRACE_MAIN, str(config)]
    return command, env


async def _start_gateway(
    args: argparse.Namespace, folder: Path, port: int, upstream: str
) -> asyncio.subprocess.Process:
    command, env = _gateway_command(args, folder, port, upstream)
    with (folder / "log.jsonl").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *command, cwd=folder, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log
        )


async def _soak(args: argparse.Namespace, folder: Path, upstream: str) -> None:
    port = _free_port()
    gateway = await _start_gateway(args, folder, port, upstream)
    try:
        loaded = await _load(args, folder, port, gateway.pid)
        tally, samples, worker_samples, rss_start, rss_end, elapsed = loaded
    finally:
        if gateway.returncode is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(gateway.wait(), 60)
            except TimeoutError:
                gateway.kill()
    rows = _usage_rows(folder / "state.db")
    after = [rss for t, rss in samples if t >= args.warmup]
    warm = after[0] if after else rss_start
    print(f"RSS start {rss_start:.1f} MB, after warm-up {warm:.1f} MB, end {rss_end:.1f} MB,"
          f" max after warm-up {max(after or [rss_end]):.1f} MB;"
          f" growth after warm-up {100 * (rss_end - warm) / warm:+.1f} %")  # fmt: skip
    if worker_samples and worker_samples[-1][1]:
        workers_after = [rss for t, rss in worker_samples if t >= args.warmup] or [0.0]
        print(f"DuckDB worker RSS first reading {worker_samples[0][1]:.1f} MB, after warm-up"
              f" {workers_after[0]:.1f} MB, last {worker_samples[-1][1]:.1f} MB")  # fmt: skip
    if len(after) >= 12:  # single readings swing by a few MB: compare minutes
        first, last = sum(after[:6]) / 6, sum(after[-6:]) / 6
        print(f"RSS mean of the first minute after warm-up {first:.1f} MB, of the last minute"
              f" {last:.1f} MB: {100 * (last - first) / first:+.1f} %")  # fmt: skip
    print(f"requests {tally.sent} in {elapsed:.0f} s ({tally.sent / elapsed:.1f} req/s),"
          f" answered {tally.answered}, errors {dict(tally.errors) or 0}")  # fmt: skip
    print(f"usage rows {rows} for {tally.reached} requests answered by the gateway"
          f" ({tally.answered} of them 200)")  # fmt: skip


async def _load(
    args: argparse.Namespace, folder: Path, port: int, pid: int
) -> tuple[Tally, list[tuple[float, float]], list[tuple[float, float]], float, float, float]:
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    tally = Tally()
    samples: list[tuple[float, float]] = []
    worker_samples: list[tuple[float, float]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        for _ in range(2400):  # up to two minutes (far slower under tracemalloc)
            try:
                async with session.get(f"{base}/health/ready") as ready:
                    if ready.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        rss_start = rss_mb(pid)
        print(f"gateway pid {pid}, RSS at start {rss_start:.1f} MB", flush=True)
        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        turn = 0
        next_report = started + 10
        while (now := time.monotonic()) < started + args.duration:
            due = int((now - started) * args.rate)
            while turn < due:
                turn += 1
                if len(pending) >= _MAX_IN_FLIGHT:  # the gateway fell behind: shed
                    tally.sent += 1
                    tally.errors["shed by the load generator"] += 1
                    continue
                task = asyncio.ensure_future(_one(session, base, turn, tally, headers))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if now >= next_report:
                rss = rss_mb(pid)
                samples.append((now - started, rss))
                workers = [rss_mb(child) for child in children(pid)]
                worker_samples.append((now - started, sum(workers)))
                in_workers = f" worker {sum(workers):6.1f} MB" if workers else ""
                rows = await asyncio.to_thread(_usage_rows, folder / "state.db")
                print(
                    f"t={now - started:5.0f}s RSS {rss:6.1f} MB (anonymous {anon_mb(pid):5.1f})"
                    f"{in_workers}"
                    f"  sent {tally.sent}  answered {tally.answered}"
                    f"  errors {sum(tally.errors.values())}  usage rows {rows}"
                    f"  in flight {len(pending)}",
                    flush=True,
                )
                next_report += 10
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        rss_end = rss_mb(pid)
        return tally, samples, worker_samples, rss_start, rss_end, time.monotonic() - started
