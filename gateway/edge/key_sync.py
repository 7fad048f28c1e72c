"""Keys from the config and the store, in one in-memory table kept fresh.

Lookups never wait on the store, except for a key this replica does not know yet
(`gateway.edge.key_lookup`: one bounded, coalesced, rate-limited lookup). A background
task polls the store's change counter
(``keys_version``) every `poll_s` (default 0.25 s) and rebuilds the table when it moved,
so a key created, changed, rotated or revoked on any replica takes effect on every
replica within a second. Polling a counter rather than LISTEN/NOTIFY or pub/sub: it works
the same on SQLite and Postgres, needs no extra connection, and survives reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.config import Config, config_key
from gateway.edge.key_lookup import UnknownKeys
from gateway.edge.keytable import (
    KeyTable,
    key_table_key,
    principal_from_config,
    principal_from_stored,
)
from gateway.edge.principal import Principal
from gateway.ops.metrics import metrics_key
from gateway.ops.tasks import tasks_key
from gateway.state.service import StateService, state_service_key
from gateway.state.store import KeyQueries, StoreUnavailable

__all__ = [
    "KeySync",
    "key_sync_context",
    "key_sync_key",
    "principal_from_stored",
    "unknown_keys_key",
]

_log = logging.getLogger("tollway.keys")


class KeySync:
    def __init__(
        self, config: Config, table: KeyTable, queries: KeyQueries, *, poll_s: float = 0.25
    ) -> None:
        self._config = config
        self.table = table
        self.queries = queries
        self.poll_s = poll_s
        self.version = -1
        self.on_error: Callable[[], None] = lambda: None
        self.refreshed_at = 0.0

    async def refresh(self) -> None:
        """Rebuild the table from the config and the store (raises if the store is away)."""
        version = await self.queries.version()
        stored = await self.queries.all()
        revoked = await self.queries.revoked_config_ids()
        entries: dict[str, Principal] = {}
        refused: dict[str, tuple[str, str]] = {}
        for configured in self._config.keys:
            digest = configured.hash.removeprefix("sha256:")
            if configured.id in revoked:
                refused[digest] = (configured.id, "revoked")
            else:
                entries[digest] = principal_from_config(configured)
        now = time.time()
        for key in stored:
            if key.revoked_at is not None:
                refused[key.digest] = (key.id, "revoked")
                continue
            entries[key.digest] = principal_from_stored(key)
            if key.previous_digest and (key.previous_valid_until or 0) > now:
                # The old secret works until its grace ends, never past the key's expiry.
                until = key.previous_valid_until
                if key.expires_at is not None and until is not None:
                    until = min(until, key.expires_at)
                entries[key.previous_digest] = principal_from_stored(key, expires_at=until)
        self.table.replace(entries, refused)
        self.version = version
        self.refreshed_at = time.monotonic()

    async def run(self) -> None:
        """Poll the change counter until cancelled; keep serving the last table on errors."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if await self.queries.version() != self.version:
                    await self.refresh()
            except StoreUnavailable as exc:
                self.on_error()
                _log.warning(
                    "key refresh failed; serving the last known keys", extra={"error": str(exc)}
                )


key_sync_key = web.AppKey("key_sync", KeySync)
unknown_keys_key = web.AppKey("unknown_keys", UnknownKeys)


async def key_sync_context(app: web.Application) -> AsyncIterator[None]:
    """Fill the key table from the store at start and keep it fresh until shutdown."""
    service = app[state_service_key]
    metrics = app[metrics_key]
    sync = KeySync(app[config_key], app[key_table_key], service.keys)
    sync.on_error = lambda: metrics.state_store_errors.labels("refresh_keys").inc()
    app[key_sync_key] = sync
    config = app[config_key]
    app[unknown_keys_key] = UnknownKeys(
        service.keys,
        app[key_table_key],
        per_ip=config.limits.key_lookups_per_ip,
        negative_s=config.server.unknown_key_cache_s,
        timeout_s=config.server.key_lookup_timeout_s,
        counter=metrics.key_lookups,
    )
    if service.migrated:
        try:
            await sync.refresh()
        except StoreUnavailable as exc:
            _log.warning("keys not loaded from the store at start", extra={"error": str(exc)})
    task = app[tasks_key].start(_keep_fresh(service, sync), name="key-sync")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _keep_fresh(service: StateService, sync: KeySync) -> None:
    await service.wait_until_ready()
    if sync.version < 0:
        with contextlib.suppress(StoreUnavailable):
            await sync.refresh()
    await sync.run()
