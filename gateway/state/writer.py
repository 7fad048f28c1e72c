"""Records written in batches, off the request path, and never lost.

`add` only appends to a bounded in-memory buffer. A background task writes batches every
`interval_s` (or sooner when a batch is full). When the store fails, records stay in the
buffer; past `max_buffered` the oldest are spilled to a local JSON-lines file, which is
replayed into the store once it answers again. `close` flushes what is left, spilling it
if the store is still away, so a SIGTERM loses nothing. A batch the store refuses for its data
(StoreRejected) is written again record by record, and the few records refused on their own go
to a `<name>.rejected.jsonl` file beside the spill file: kept, but never blocking the rest.

Exactly once: a flush cancelled while its insert runs (the SQLite thread runs on whatever
the caller does; Postgres may already have committed) waits for that insert to settle, up
to `settle_s`, and drops from the buffer what it wrote, so the final flush does not write
it again. What stays uncertain (an insert still running after `settle_s`) is written
again later, and the store's unique request id turns the repeat into nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.state.store import StoreRejected, StoreUnavailable

__all__ = ["BatchWriter"]

_log = logging.getLogger("tollway.state")


def _line(record: tuple[Any, ...]) -> bytes:
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:  # an integer past 64 bits: the stdlib writes it exactly
        return json.dumps(record).encode() + b"\n"


Insert = Callable[[Sequence[Sequence[Any]]], Awaitable[None]]


def _retrieve(task: asyncio.Future[None]) -> None:
    """An insert whose flush stopped waiting may fail later: its error was handled (the
    records stayed buffered), so asyncio need not report it."""
    if not task.cancelled():
        task.exception()


class BatchWriter:
    def __init__(
        self,
        name: str,
        insert: Insert,
        spill_path: Path,
        *,
        on_spill: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_reject: Callable[[int], None] | None = None,
        batch: int = 500,
        max_buffered: int = 20_000,
        interval_s: float = 1.0,
        settle_s: float = 2.0,
    ) -> None:
        self.name = name
        self._insert = insert
        self.spill_path = spill_path
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._batch = batch
        self._max = max_buffered
        self.interval_s = interval_s
        self.settle_s = settle_s
        self._wake = asyncio.Event()
        self._on_spill = on_spill or (lambda _n: None)
        self._on_depth = on_depth or (lambda _n: None)
        self._on_reject = on_reject or (lambda _n: None)
        self.rejected_path = spill_path.with_name(f"{name}.rejected.jsonl")
        self._flush_lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, record: tuple[Any, ...]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self._batch:
            self._wake.set()

    async def run(self) -> None:
        """The background loop: flush every interval until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the loop must outlive any surprise; records stay buffered
                _log.exception("%s writer: flush failed", self.name)

    async def flush(self) -> bool:
        """Write what is buffered (and any spilled file); False if the store is away."""
        async with self._flush_lock:
            try:
                await self._replay_spill()
                while self._buffer:
                    batch = [self._buffer[i] for i in range(min(self._batch, len(self._buffer)))]
                    try:
                        await self._insert_settled(batch)
                    except StoreRejected:
                        await self._insert_one_by_one(len(batch))
                        continue
                    for _ in batch:
                        self._buffer.popleft()
            except StoreUnavailable as exc:
                _log.warning(
                    "state store unavailable; %s records wait", self.name, extra={"error": str(exc)}
                )
                await self._spill_overflow()
                return False
            finally:
                self._on_depth(len(self._buffer))
            return True

    async def _insert_settled(self, batch: list[tuple[Any, ...]]) -> None:
        """Insert `batch`, the buffer's first records. Cancelled meanwhile, wait (up to
        `settle_s`) for the insert to end and drop the records it wrote, then re-raise."""
        task = asyncio.ensure_future(self._insert(batch))
        task.add_done_callback(_retrieve)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task], timeout=self.settle_s)
            if task.done() and not task.cancelled() and task.exception() is None:
                for _ in batch:
                    self._buffer.popleft()
            raise

    async def _insert_one_by_one(self, count: int) -> None:
        """Write the buffer's first `count` records singly; set aside those refused alone."""
        for _ in range(count):
            record = self._buffer[0]
            try:
                await self._insert([record])
            except StoreRejected:
                await self._reject([record])
            self._buffer.popleft()

    async def _reject(self, records: list[tuple[Any, ...]]) -> None:
        await asyncio.to_thread(self._append, self.rejected_path, records)
        self._on_reject(len(records))
        _log.error(
            "%s writer: the store refused %d record(s); kept in %s",
            self.name,
            len(records),
            self.rejected_path,
        )

    async def _spill_overflow(self) -> None:
        excess = len(self._buffer) - self._max
        if excess > 0:
            await self._spill([self._buffer.popleft() for _ in range(excess)])

    async def _spill(self, records: list[tuple[Any, ...]]) -> None:
        """Append to the spill file in a thread: the write and fsync never stall the loop."""
        if not records:
            return
        await asyncio.to_thread(self._append, self.spill_path, records)
        self._on_spill(len(records))

    @staticmethod
    def _append(path: Path, records: list[tuple[Any, ...]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            with path.open("ab") as spill:
                # Locked, and still the file under `path`: a replay (of this gateway or of
                # another on the same directory) renames it only under the same lock, so
                # nothing is appended to a file already read.
                fcntl.flock(spill, fcntl.LOCK_EX)
                if not _is_at(spill.fileno(), path):
                    continue
                for record in records:
                    spill.write(_line(record))
                spill.flush()
                os.fsync(spill.fileno())
                return

    async def _replay_spill(self) -> None:
        """Replay the file a failed replay left (older records) first, then the spill file."""
        replaying = self.spill_path.with_suffix(".replaying")
        while replaying.exists() or self.spill_path.exists():
            if not replaying.exists() and not await asyncio.to_thread(
                _take, self.spill_path, replaying
            ):
                continue  # another gateway on the same spill directory took it
            await self._replay_file(replaying)

    async def _replay_file(self, replaying: Path) -> None:
        try:
            text = await asyncio.to_thread(replaying.read_bytes)
        except FileNotFoundError:
            return  # replayed by another gateway on the same spill directory
        lines = text.splitlines()
        # The stdlib reads integers exactly at any size (orjson would make a float of a huge one).
        records = [tuple(json.loads(line)) for line in lines if line.strip()]
        written = 0
        try:
            while written < len(records):
                batch = records[written : written + self._batch]
                try:
                    await self._insert(batch)
                    written += len(batch)
                except StoreRejected:
                    for record in batch:
                        try:
                            await self._insert([record])
                        except StoreRejected:
                            await self._reject([record])
                        written += 1
        except StoreUnavailable:
            # Keep exactly what was not written, so a later replay adds no duplicates.
            rest = b"".join(_line(r) for r in records[written:])
            await asyncio.to_thread(replaying.write_bytes, rest)
            raise
        await asyncio.to_thread(replaying.unlink, missing_ok=True)

    async def close(self, timeout_s: float = 1.0, settle_s: float = 0.5) -> None:
        """Flush before exit; spill whatever the store would not take in time. Bounded:
        `timeout_s` to flush, then at most `settle_s` for an insert already running."""
        self.settle_s = min(self.settle_s, settle_s)
        try:
            done = await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            done = False
        if not done:
            records = list(self._buffer)
            self._buffer.clear()
            await self._spill(records)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the one `path` names now."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _take(spill: Path, replaying: Path) -> bool:
    """Rename `spill` to `replaying` under the appenders' lock; False if it was gone."""
    try:
        with spill.open("rb") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            if not _is_at(file.fileno(), spill):
                return False
            spill.rename(replaying)
            return True
    except FileNotFoundError:
        return False
