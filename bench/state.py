"""Backup and restore of a state store holding many usage records: time and peak RSS.

    python -m bench state [--rows N] [--postgres DSN]

Each step runs in its own process, so its peak RSS is its own: a flat figure as the
table grows is what streaming buys.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

POSTGRES_DSN = os.environ.get(
    "TOLLWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def _fill_sqlite(path: str, rows: int) -> None:
    import sqlite3

    from gateway.state.store import SQLiteStore

    store = SQLiteStore(path)
    asyncio.run(_migrate_and_close(store))
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO tollway_usage (at, day, request_id, key_id, tenant, route_class, route, "
            "backend, model, status, latency_ms, tokens_in, tokens_out, rows_out, bytes_out, "
            "cache_hit) VALUES (?, '2026-11-25', ?, 'app-1', 'acme', 'chat', "
            "'/v1/chat/completions', 'openai', 'gpt-4o-mini', 200, 12.5, 20, 80, 0, 512, 0)",
            ((1764000000.0 + i, f"req-{i}") for i in range(rows)),
        )


async def _migrate_and_close(store: object) -> None:
    await store.migrate()  # type: ignore[attr-defined]
    await store.close()  # type: ignore[attr-defined]


def _step(name: str, url: str, archive: str, queue: object) -> None:
    from gateway.state.archive import backup, restore

    started = time.perf_counter()
    if name == "backup":
        asyncio.run(backup(url, Path(archive)))
    else:
        asyncio.run(restore(url, Path(archive), None, force=True))
    elapsed = time.perf_counter() - started
    queue.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))  # type: ignore[attr-defined]


def _measure(name: str, url: str, archive: str) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_step, args=(name, url, archive, queue))
    process.start()
    result = queue.get(timeout=3600)
    process.join()
    return result  # type: ignore[no-any-return]


async def _postgres_database() -> str:
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_DSN)
    name = f"tw_bench_{os.getpid()}"
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return POSTGRES_DSN.rsplit("/", 1)[0] + f"/{name}"


async def _drop(url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_DSN)
    await admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    await admin.close()


def _line(step: str, rows: int, seconds: float, rss: float) -> None:
    print(f"{step:22} {seconds:6.1f} s, {rows / seconds:9.0f} rows/s, peak RSS {rss:5.0f} MB")


def _line(step: str, rows: int, seconds: float, rss: float) -> None:
    print(f"{step:22} {seconds:6.1f} s, {rows / seconds:9.0f} rows/s, peak RSS {rss:5.0f} MB")


async def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench state")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        source = f"sqlite:///{folder}/source.db"
        await asyncio.to_thread(_fill_sqlite, f"{folder}/source.db", args.rows)
        archive = f"{folder}/state.twb"
        targets = [("sqlite", f"sqlite:///{folder}/target.db")]
        if not args.no_postgres:
            targets.append(("postgres", await _postgres_database()))
        try:
            seconds, rss = await asyncio.to_thread(_measure, "backup", source, archive)
            size = os.path.getsize(archive) / 1e6  # noqa: ASYNC240 - one stat, once
            print(f"{args.rows} usage records; archive {size:.1f} MB")
            _line("backup  from sqlite", args.rows, seconds, rss)
            for kind, url in targets:
                seconds, rss = await asyncio.to_thread(_measure, "restore", url, archive)
                _line(f"restore into {kind}", args.rows, seconds, rss)
                if kind == "postgres":
                    seconds, rss = await asyncio.to_thread(_measure, "backup", url, archive + ".pg")
                    _line("backup  from postgres", args.rows, seconds, rss)
        finally:
            if not args.no_postgres:
                await _drop(targets[1][1])
