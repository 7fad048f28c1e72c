"""Usage records the store refuses for their data never block the records behind them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.state.schema import MIGRATIONS
from gateway.state.service import USAGE_COLUMNS
from gateway.state.store import open_store
from gateway.state.writer import BatchWriter


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: Any, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


def usage(request_id: str, *, model: str = "gpt-4o-mini", tokens_in: int = 5) -> tuple[Any, ...]:
    now = time.time()
    return (now, "2026-01-01", request_id, "app-1", "acme", "llm", "chat", "openai", model,
            200, 1.5, tokens_in, 7, 0, 100, 0)  # fmt: skip


@pytest.mark.parametrize("where", ["buffer", "spill"])
async def test_a_refused_record_is_set_aside_and_the_rest_are_written(
    state_url: str, tmp_path: Path, where: str
) -> None:
    store = open_store(state_url)
    await store.migrate()

    async def insert(rows: Sequence[Sequence[Any]]) -> None:
        marks = ", ".join("?" * 16)
        await store.execute_many(
            f"INSERT INTO tollway_usage ({USAGE_COLUMNS}) VALUES ({marks})", rows
        )

    rejected: list[int] = []
    writer = BatchWriter(
        "usage", insert, tmp_path / "spill" / "usage.spill.jsonl", batch=4,
        on_reject=rejected.append,
    )  # fmt: skip
    records = [usage(f"r{i}") for i in range(10)]
    # A count past BIGINT is refused by both stores; Postgres also refuses a NUL in text.
    records[3] = usage("bad-int", tokens_in=2**70)
    if store.kind == "postgres":
        records[6] = usage("bad-nul", model="gpt\x00x")
    if where == "buffer":
        for record in records:
            writer.add(record)
    else:  # left by an earlier process that could not reach the store
        writer.spill_path.parent.mkdir(parents=True)
        writer.spill_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        assert await writer.flush() is True
        assert len(writer) == 0 and not writer.spill_path.exists()
        bad = {"bad-int", "bad-nul"} if store.kind == "postgres" else {"bad-int"}
        rows = await store.fetch("SELECT request_id FROM tollway_usage")
        assert sorted(r[0] for r in rows) == sorted(
            r[2] for r in records if r[2] not in bad
        )  # each good record exactly once
        kept = [json.loads(line) for line in writer.rejected_path.read_text().splitlines()]
        assert {k[2] for k in kept} == bad and sum(rejected) == len(bad)
        assert await writer.flush() is True  # nothing is written twice on the next round
        assert len(await store.fetch("SELECT request_id FROM tollway_usage")) == len(rows)
    finally:
        await store.close()


async def test_replicas_starting_at_once_apply_each_migration_once(state_url: str) -> None:
    stores = [open_store(state_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))  # 4 replicas racing
        await stores[0].migrate()  # and again: a no-op
        versions = await stores[0].fetch("SELECT version FROM tollway_migrations ORDER BY version")
        assert [v[0] for v in versions] == [version for version, _ in MIGRATIONS]
        rows = await stores[1].fetch("SELECT count(*) FROM tollway_usage")
        assert rows[0][0] == 0
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_past_the_buffer_records_spill_and_a_restart_replays_them_once(
    tmp_path: Path,
) -> None:
    # The store's directory does not exist yet: SQLite cannot open it, as if the store were down.
    url = f"sqlite:///{tmp_path / 'later' / 'state.db'}"
    spill = tmp_path / "spill" / "usage.spill.jsonl"
    spilled: list[int] = []

    def writer_for(store: Any) -> BatchWriter:
        async def insert(rows: Sequence[Sequence[Any]]) -> None:
            marks = ", ".join("?" * 16)
            await store.execute_many(
                f"INSERT INTO tollway_usage ({USAGE_COLUMNS}) VALUES ({marks})", rows
            )

        return BatchWriter("usage", insert, spill, batch=2, max_buffered=3, on_spill=spilled.append)

    away = open_store(url)
    writer = writer_for(away)
    for i in range(10):
        writer.add(usage(f"r{i}"))
    assert await writer.flush() is False
    assert len(writer) == 3 and len(spill.read_bytes().splitlines()) == 7 == sum(spilled)
    await writer.close(timeout_s=1)  # SIGTERM while the store is still away: all to disk
    on_disk = [p.read_bytes().splitlines() for p in spill.parent.iterdir()]
    assert len(writer) == 0 and sum(map(len, on_disk)) == 10
    await away.close()

    (tmp_path / "later").mkdir()
    store = open_store(url)
    await store.migrate()
    try:
        restarted = writer_for(store)
        assert await restarted.flush() is True and list(spill.parent.iterdir()) == []
        rows = await store.fetch("SELECT request_id FROM tollway_usage ORDER BY at")
        assert [r[0] for r in rows] == [f"r{i}" for i in range(10)]
    finally:
        await store.close()
