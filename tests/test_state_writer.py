"""Usage records the store refuses for their data never block the records behind them."""

from __future__ import annotations

import asyncio
import fcntl
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


def service_for(store: Any, tmp_path: Path) -> Any:
    from gateway.ops.metrics import Metrics
    from gateway.state.service import StateService

    return StateService(store, tmp_path / "spill", Metrics())


def record(request_id: str, outcome: str | None = "completed") -> tuple[Any, ...]:
    """A record as the access log writes it: the columns, the details, the outcome."""
    return (*usage(request_id), 0, 0, 0.0, 0, 0, None, outcome)


async def test_a_usage_record_written_twice_is_stored_once(state_url: str, tmp_path: Path) -> None:
    store = open_store(state_url)
    await store.migrate()
    service = service_for(store, tmp_path)
    try:
        twice = record("same-id")
        service.usage.add(twice)
        service.usage.add(twice)
        assert await service.usage.flush() is True
        service.usage.add(twice)  # and again in a later batch
        service.usage.add(record("other-id"))
        assert await service.usage.flush() is True
        rows = await store.fetch(
            "SELECT request_id, outcome FROM tollway_usage ORDER BY request_id"
        )
        assert [tuple(r) for r in rows] == [("other-id", "completed"), ("same-id", "completed")]
    finally:
        await store.close()


async def test_a_flush_cancelled_while_its_insert_runs_neither_loses_nor_repeats_a_record(
    tmp_path: Path,
) -> None:
    """The store commits on its own thread whatever the caller does (SQLite's case): a
    flush cancelled meanwhile must not leave those records buffered for the next flush."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stored: list[str] = []
    thread = ThreadPoolExecutor(1)
    started = threading.Event()

    def commit(rows: Sequence[Sequence[Any]]) -> None:
        started.set()
        time.sleep(0.3)  # the insert runs on; the caller gives up waiting meanwhile
        stored.extend(r[2] for r in rows)

    async def insert(rows: Sequence[Sequence[Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(thread, commit, rows)

    writer = BatchWriter("usage", insert, tmp_path / "spill" / "usage.spill.jsonl", batch=50)
    for i in range(120):
        writer.add(usage(f"r{i}"))
    flushing = asyncio.ensure_future(writer.flush())
    await asyncio.to_thread(started.wait, 2)
    flushing.cancel()  # as a shutdown cancels the writer's loop mid-flush
    with pytest.raises(asyncio.CancelledError):
        await flushing
    await writer.close(timeout_s=5)
    thread.shutdown(wait=True)
    assert sorted(stored) == sorted(f"r{i}" for i in range(120))  # each exactly once
    assert not writer.spill_path.exists()


async def test_a_spill_file_replayed_over_records_already_stored_adds_none_twice(
    state_url: str, tmp_path: Path
) -> None:
    store = open_store(state_url)
    await store.migrate()
    service = service_for(store, tmp_path)
    try:
        records = [record(f"r{i}") for i in range(6)]
        for item in records[:4]:
            service.usage.add(item)
        assert await service.usage.flush() is True
        # A replay whose first part had reached the store before the process was killed;
        # one line is from an older version, without an outcome.
        lines = [json.dumps(r) for r in records] + [json.dumps(usage("old-format"))]
        service.usage.spill_path.parent.mkdir(parents=True, exist_ok=True)
        service.usage.spill_path.write_text("\n".join(lines) + "\n")
        assert await service.usage.flush() is True
        rows = await store.fetch("SELECT request_id, outcome FROM tollway_usage")
        assert sorted(r[0] for r in rows) == sorted([f"r{i}" for i in range(6)] + ["old-format"])
        assert dict((r[0], r[1]) for r in rows)["old-format"] is None
    finally:
        await store.close()


async def test_upgrading_the_store_drops_duplicate_usage_rows_and_enforces_one_per_record(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # a store as the first version left it, with the bug
        old.execute("CREATE TABLE tollway_migrations (version INTEGER PRIMARY KEY, "
                    "applied_at DOUBLE PRECISION NOT NULL)")  # fmt: skip
        for statement in MIGRATIONS[0][1]:
            old.execute(statement)
        old.execute("INSERT INTO tollway_migrations VALUES (1, 0)")
        marks = ", ".join("?" * 16)
        duplicate = usage("dup")
        rows = [duplicate, duplicate, usage("single"), (*usage("x")[:2], None, *usage("x")[3:])]
        old.executemany(f"INSERT INTO tollway_usage ({USAGE_COLUMNS}) VALUES ({marks})", rows)
    store = open_store(f"sqlite:///{path}")
    try:
        await store.migrate()
        rows = await store.fetch("SELECT request_id FROM tollway_usage ORDER BY request_id")
        assert [r[0] for r in rows] == [None, "dup", "single"]
        await service_for(store, tmp_path)._insert_usage([duplicate])  # the same record again
        assert len(await store.fetch("SELECT 1 FROM tollway_usage WHERE request_id = 'dup'")) == 1
    finally:
        await store.close()


async def test_two_requests_sent_with_the_same_request_id_are_both_recorded(
    state_url: str, tmp_path: Path
) -> None:
    store = open_store(state_url)
    await store.migrate()
    service = service_for(store, tmp_path)
    try:
        first, second = record("reused"), record("reused")
        second = (second[0] + 0.5, *second[1:])  # a later request, the same id from the client
        for row in (first, second, first):  # and the first written again
            service.usage.add(row)
        assert await service.usage.flush() is True
        rows = await store.fetch(
            "SELECT count(*) FROM tollway_usage WHERE request_id = ?", ("reused",)
        )
        assert rows[0][0] == 2
    finally:
        await store.close()


async def test_two_gateways_replaying_one_spill_directory_neither_fails(tmp_path: Path) -> None:
    spill = tmp_path / "spill" / "usage.spill.jsonl"
    spill.parent.mkdir()
    spill.write_text("".join(json.dumps(usage(f"r{i}")) + "\n" for i in range(40)))
    stored: set[str] = set()  # the store's unique index: a record written twice is kept once

    async def insert(rows: Sequence[Sequence[Any]]) -> None:
        await asyncio.sleep(0.001)  # the two replays interleave at every batch
        stored.update(str(row[2]) for row in rows)

    first, second = (BatchWriter("usage", insert, spill, batch=5) for _ in range(2))
    assert await asyncio.gather(first.flush(), second.flush()) == [True, True]
    await asyncio.gather(first.close(), second.close())
    assert stored == {f"r{i}" for i in range(40)}
    assert list(spill.parent.iterdir()) == []


async def test_a_record_appended_while_a_replay_starts_is_not_lost(tmp_path: Path) -> None:
    spill = tmp_path / "spill" / "usage.spill.jsonl"
    spill.parent.mkdir()
    spill.write_text(json.dumps(usage("r0")) + "\n")
    stored: list[str] = []

    async def insert(rows: Sequence[Sequence[Any]]) -> None:
        stored.extend(str(row[2]) for row in rows)

    writer = BatchWriter("usage", insert, spill, batch=5)
    with spill.open("ab") as appender:  # another gateway, in the middle of an append
        fcntl.flock(appender, fcntl.LOCK_EX)
        flushing = asyncio.ensure_future(writer.flush())
        await asyncio.sleep(0.3)
        assert spill.exists() and not flushing.done()  # the replay waits for the append
        appender.write((json.dumps(usage("r1")) + "\n").encode())
        appender.flush()
    assert await flushing is True
    assert stored == ["r0", "r1"] and list(spill.parent.iterdir()) == []
