"""Records written in batches, off the request path, and never lost.

`add` only appends to a bounded in-memory buffer. A background task writes batches every
`interval_s` (or sooner when a batch is full). When the store fails, records stay in the
buffer; past `max_buffered` the oldest are spilled to a local JSON-lines file, which is
replayed into the store once it answers again. `close` flushes what is left, spilling it
if the store is still away, so a SIGTERM loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.state.store import StoreUnavailable

__all__ = ["BatchWriter"]

_log = logging.getLogger("tollway.state")

Insert = Callable[[Sequence[Sequence[Any]]], Awaitable[None]]


class BatchWriter:
    def __init__(
        self,
        name: str,
        insert: Insert,
        spill_path: Path,
        *,
        on_spill: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        batch: int = 500,
        max_buffered: int = 20_000,
        interval_s: float = 1.0,
    ) -> None:
        self.name = name
        self._insert = insert
        self.spill_path = spill_path
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._batch = batch
        self._max = max_buffered
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._on_spill = on_spill or (lambda _n: None)
        self._on_depth = on_depth or (lambda _n: None)
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
            await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered (and any spilled file); False if the store is away."""
        async with self._flush_lock:
            try:
                await self._replay_spill()
                while self._buffer:
                    batch = [self._buffer[i] for i in range(min(self._batch, len(self._buffer)))]
                    await self._insert(batch)
                    for _ in batch:
                        self._buffer.popleft()
            except StoreUnavailable as exc:
                _log.warning(
                    "state store unavailable; %s records wait", self.name, extra={"error": str(exc)}
                )
                self._spill_overflow()
                return False
            finally:
                self._on_depth(len(self._buffer))
            return True

    def _spill_overflow(self) -> None:
        excess = len(self._buffer) - self._max
        if excess > 0:
            self._spill([self._buffer.popleft() for _ in range(excess)])

    def _spill(self, records: list[tuple[Any, ...]]) -> None:
        if not records:
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("ab") as spill:
            for record in records:
                spill.write(orjson.dumps(record) + b"\n")
            spill.flush()
            os.fsync(spill.fileno())
        self._on_spill(len(records))

    async def _replay_spill(self) -> None:
        if not self.spill_path.exists():
            return
        replaying = self.spill_path.with_suffix(".replaying")
        if not replaying.exists():
            self.spill_path.rename(replaying)
        lines = replaying.read_bytes().splitlines()
        records = [tuple(orjson.loads(line)) for line in lines if line.strip()]
        for start in range(0, len(records), self._batch):
            try:
                await self._insert(records[start : start + self._batch])
            except StoreUnavailable:
                # Keep exactly what was not written, so a later replay adds no duplicates.
                replaying.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records[start:]))
                raise
        replaying.unlink()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush before exit; spill whatever the store would not take in time."""
        try:
            done = await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            done = False
        if not done:
            self._spill(list(self._buffer))
            self._buffer.clear()
