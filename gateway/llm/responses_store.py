"""Stored responses are tenant-bound: who created each response id Tollway relayed.

All tenants share one upstream organisation, so the upstream would hand any tenant any
stored response by id. Tollway records the tenant (and the backend that holds it) the
moment an id is known, and answers 404 to every other tenant, the same 404 as for an
id it never relayed: an unknown id fails closed, and no tenant learns that another's id
exists. Records live in the state store with an expiry (``server.responses_ttl_s``,
default 30 days, as long as the provider keeps them) and, for speed, in a bounded map in
this process. When the store cannot be read, a lookup answers 503 rather than guess.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from gateway.config import config_key
from gateway.errors import BackendUnavailable, NotFound
from gateway.ops.metrics import Metrics, metrics_key
from gateway.ops.tasks import tasks_key
from gateway.state.response_owners import ResponseOwner, ResponseOwnerQueries
from gateway.state.service import state_service_key
from gateway.state.store import StoreUnavailable

__all__ = ["ResponseOwner", "ResponseOwners", "response_owners_context", "response_owners_key"]

_log = logging.getLogger("tollway.llm")

PURGE_EVERY_S: Final = 3600.0
_MEMORY_ENTRIES: Final = 50_000


class ResponseOwners:
    def __init__(
        self,
        queries: ResponseOwnerQueries,
        ttl_s: float,
        metrics: Metrics,
        *,
        max_memory: int = _MEMORY_ENTRIES,
    ) -> None:
        self.queries = queries
        self.ttl_s = ttl_s
        self._metrics = metrics
        self._memory: OrderedDict[str, ResponseOwner] = OrderedDict()
        self._max_memory = max_memory

    def _remember(self, owner: ResponseOwner) -> None:
        self._memory[owner.response_id] = owner
        self._memory.move_to_end(owner.response_id)
        while len(self._memory) > self._max_memory:
            self._memory.popitem(last=False)

    async def record(
        self, response_id: str, *, tenant: str, key_id: str | None, backend: str, model: str | None
    ) -> None:
        """Bind `response_id` to `tenant`. A store that does not answer is logged and
        counted; the binding still holds in this process."""
        now = time.time()
        owner = ResponseOwner(response_id, tenant, backend, model, key_id, now + self.ttl_s)
        known = self._memory.get(response_id)
        if known is not None and known.tenant != tenant:
            return  # first come: an id never changes hands
        self._remember(owner)
        try:
            await self.queries.save(owner, now)
        except StoreUnavailable as exc:
            self._metrics.state_store_errors.labels("write_response_owner").inc()
            _log.warning(
                "could not store a response id's owner; it holds in this process only",
                extra={"error": str(exc)},
            )

    async def lookup(self, response_id: str) -> ResponseOwner | None:
        now = time.time()
        owner = self._memory.get(response_id)
        if owner is not None and owner.expires_at > now:
            return owner
        try:
            owner = await self.queries.get(response_id, now)
        except StoreUnavailable:
            self._metrics.state_store_errors.labels("read_response_owner").inc()
            raise BackendUnavailable(
                "cannot check who owns this response right now; try again shortly",
                code="state_store_unavailable",
                retry_after=1,
            ) from None
        if owner is not None:
            self._remember(owner)
        return owner

    async def owned(
        self, response_id: object, tenant: str, *, param: str | None = None
    ) -> ResponseOwner:
        """The owner of `response_id` if it is `tenant`; otherwise 404, the same for an id
        of another tenant and one never seen. `param` names the body field it came in."""
        owner = None
        if isinstance(response_id, str) and _plausible(response_id):
            owner = await self.lookup(response_id)
        if owner is not None and owner.tenant == tenant:
            return owner
        reason = "unknown" if owner is None else "other_tenant"
        self._metrics.response_id_refusals.labels(reason).inc()
        shown = response_id if isinstance(response_id, str) else ""
        if param == "previous_response_id":
            raise NotFound(
                f"Previous response with id '{shown[:128]}' not found.",
                code="previous_response_not_found",
                param=param,
            )
        raise NotFound(
            f"Response with id '{shown[:128]}' not found.", code="response_not_found", param=param
        )

    async def forget(self, response_id: str) -> None:
        self._memory.pop(response_id, None)
        try:
            await self.queries.delete(response_id)
        except StoreUnavailable:
            self._metrics.state_store_errors.labels("delete_response_owner").inc()

    async def purge(self) -> int:
        """Delete expired records, in batches; how many went."""
        now = time.time()
        for key in [k for k, o in self._memory.items() if o.expires_at <= now]:
            del self._memory[key]
        total = 0
        while True:
            removed = await self.queries.purge(now)
            total += removed
            if removed < 500:
                return total
            await asyncio.sleep(0)

    async def purge_forever(self, every_s: float = PURGE_EVERY_S) -> None:
        while True:
            try:
                removed = await self.purge()
                if removed:
                    _log.info("expired response owners removed", extra={"rows": removed})
            except StoreUnavailable:
                self._metrics.state_store_errors.labels("purge_response_owners").inc()
            await asyncio.sleep(every_s)


def _plausible(response_id: str) -> bool:
    """An id as providers make them (``resp_…``): letters, digits, ``_`` and ``-``. It is
    put in an upstream path, so nothing else may pass."""
    bare = response_id.replace("_", "").replace("-", "")
    return 0 < len(response_id) <= 256 and bare.isascii() and bare.isalnum()


response_owners_key = web.AppKey("response_owners", ResponseOwners)


async def response_owners_context(app: web.Application) -> AsyncIterator[None]:
    """The owners of stored responses, on the app's state store; expired ones purged hourly."""
    store = app[state_service_key].store
    owners = ResponseOwners(
        ResponseOwnerQueries(store), app[config_key].server.responses_ttl_s, app[metrics_key]
    )
    app[response_owners_key] = owners
    app[tasks_key].start(owners.purge_forever(), name="response-owner-purge")
    yield
