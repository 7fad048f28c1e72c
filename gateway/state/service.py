"""The state store in the app: opened and migrated at start, usage and audit written in
the background, everything flushed at shutdown. (The key table's sync with the store
belongs to the front door: `gateway.edge.key_sync`.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import config_key
from gateway.config.rates import parse_rate
from gateway.ops.metrics import metrics_key
from gateway.ops.tasks import tasks_key
from gateway.resilience.limiter import LocalLimiter, Window
from gateway.state.store import KeyQueries, StateStore, StoreUnavailable, open_store
from gateway.state.writer import BatchWriter

__all__ = ["StateService", "state_context", "state_service_key"]

_log = logging.getLogger("tollway.state")

USAGE_COLUMNS = (
    "at, day, request_id, key_id, tenant, route_class, route, backend, model, status, "
    "latency_ms, tokens_in, tokens_out, rows_out, bytes_out, cache_hit"
)
USAGE_DETAIL_COLUMNS = (
    "tokens_cached, tokens_reasoning, audio_seconds, audio_bytes, images, image_size"
)
"""Added in schema 2; a record written (or spilled) by an older Tollway lacks them."""
USAGE_RECORD_COLUMNS = f"{USAGE_COLUMNS}, {USAGE_DETAIL_COLUMNS}, outcome"
"""What a usage record holds, in order: the columns above, then how a stream ended."""
_USAGE_FIELDS = USAGE_RECORD_COLUMNS.count(",") + 1
_MISSING_TAIL = (0, 0, 0.0, 0, 0, None, None)
"""Defaults for what an older record lacks: the details, then the outcome."""
# A record is unique in the store by its request id and time: written again (a flush
# cancelled after its insert ran, a spill file replayed) it adds nothing; two requests a
# client sent with the same X-Request-ID are two records.
_INSERT_USAGE = (
    f"INSERT INTO tollway_usage ({USAGE_RECORD_COLUMNS}) "
    f"VALUES ({', '.join('?' * _USAGE_FIELDS)}) ON CONFLICT DO NOTHING"
)
AUDIT_COLUMNS = "at, action, key_id, actor, request_id, client_ip, detail"
_REFUSALS_PER_IP = (parse_rate("20/minute"),)


class StateService:
    def __init__(self, store: StateStore, spill_dir: Path, metrics: Any) -> None:
        self.store = store
        self.keys = KeyQueries(store)
        self.migrated = False
        self._refusals = LocalLimiter()
        self._metrics = metrics
        self.usage = BatchWriter(
            "usage",
            self._insert_usage,
            spill_dir / "usage.spill.jsonl",
            on_spill=lambda n: metrics.usage_spilled.inc(n),
            on_depth=lambda n: metrics.usage_buffered.set(n),
            on_reject=lambda n: metrics.usage_rejected.inc(n),
        )
        self.audit = BatchWriter(
            "audit", self._insert_audit, spill_dir / "audit.spill.jsonl", interval_s=0.5
        )

    async def _insert_usage(self, rows: Sequence[Sequence[Any]]) -> None:
        # A record written or spilled by an older version lacks the details and outcome.
        full = [r if len(r) == _USAGE_FIELDS else (*r, *_MISSING_TAIL[len(r) - 16 :]) for r in rows]
        async with self._counting_errors("write_usage"):
            await self.store.execute_many(_INSERT_USAGE, full)

    async def _insert_audit(self, rows: Sequence[Sequence[Any]]) -> None:
        async with self._counting_errors("write_audit"):
            await self.store.execute_many(
                f"INSERT INTO tollway_audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )

    @contextlib.asynccontextmanager
    async def _counting_errors(self, operation: str) -> AsyncIterator[None]:
        """`tollway_state_store_errors_total{operation}` counts calls the store failed."""
        try:
            yield
        except StoreUnavailable:
            self._metrics.state_store_errors.labels(operation).inc()
            raise

    async def ensure_ready(self) -> None:
        """Migrate the store once; raises `StoreUnavailable` while it does not answer."""
        if not self.migrated:
            await self.store.migrate()
            self.migrated = True

    async def wait_until_ready(self, retry_s: float = 1.0) -> None:
        while not self.migrated:
            try:
                await self.ensure_ready()
            except StoreUnavailable:
                await asyncio.sleep(retry_s)

    def record_audit(
        self,
        action: str,
        *,
        key_id: str | None,
        actor: str | None,
        request_id: str | None,
        client_ip: str | None,
        detail: str | None = None,
    ) -> None:
        self.audit.add((time.time(), action, key_id, actor, request_id, client_ip, detail))

    def record_refusal(
        self, reason: str, *, key_id: str | None, request_id: str | None, client_ip: str
    ) -> None:
        """A refused credential, at most 20 a minute per address (a flood fills no disk)."""
        window = (Window(f"audit:{client_ip}", _REFUSALS_PER_IP[0]),)
        if self._refusals.hit_now(window).allowed:
            self.record_audit(
                f"auth.{reason}", key_id=key_id, actor=None, request_id=request_id,
                client_ip=client_ip,
            )  # fmt: skip


state_service_key = web.AppKey("state_service", StateService)


async def state_context(app: web.Application) -> AsyncIterator[None]:
    config = app[config_key]
    store = open_store(config.state)
    service = StateService(store, Path(config.state_spill_dir), app[metrics_key])
    app[state_service_key] = service
    try:
        await service.ensure_ready()
    except StoreUnavailable as exc:
        _log.warning("state store unavailable at start; config keys only until it answers",
                     extra={"error": str(exc)})  # fmt: skip
    tasks = app[tasks_key]
    running = [
        tasks.start(service.wait_until_ready(), name="state-migrate"),
        tasks.start(service.usage.run(), name="usage-writer"),
        tasks.start(service.audit.run(), name="audit-writer"),
    ]
    try:
        yield
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        # Both at once: a drain must end within its timeout plus a moment, even with the
        # store away (what it would not take in time is spilled, replayed at next start).
        await asyncio.gather(service.usage.close(), service.audit.close())
        await store.close()
