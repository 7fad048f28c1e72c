"""The admin API (scope ``admin``): key lifecycle, usage and audit.

Keys from the config and from the store are listed together (``source`` says which);
only stored keys change, but any key can be revoked. The secret of a new or rotated key
is in the answer once and nowhere else; no answer carries a key's hash.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.admin.params import key_id_param, limit_param, text_param, time_param
from gateway.admin.schemas import CREATE_KEY, PATCH_KEY, ROTATE_KEY
from gateway.config import KeyConfig, config_key
from gateway.config.keyhash import key_digest, new_key
from gateway.edge.body import read_json
from gateway.edge.client_ip import request_ip
from gateway.edge.key_sync import key_sync_key
from gateway.edge.principal import principal_key
from gateway.edge.request_id import request_id_key
from gateway.errors import BackendUnavailable, BadRequest, NotFound, TollwayError
from gateway.routing import RouteDef, RouteSpec
from gateway.state.key_changes import (
    EDITABLE,
    MAX_GRACE_S,
    apply_changes,
    check_text,
    public_stored,
)
from gateway.state.service import StateService, state_service_key
from gateway.state.store import StoredKey, StoreRejected, StoreUnavailable

__all__ = ["routes"]


_GROUPS: Final = {
    "key": "key_id",
    "tenant": "tenant",
    "model": "model",
    "route": "route_class",
    "day": "day",
}


class Conflict(TollwayError):
    status = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


def _service(request: web.Request) -> StateService:
    return request.app[state_service_key]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _audit(request: web.Request, action: str, key_id: str | None, detail: dict[str, Any]) -> None:
    _service(request).record_audit(
        action,
        key_id=key_id,
        actor=request[principal_key].key_id,
        request_id=request.get(request_id_key),
        client_ip=request_ip(request),
        detail=orjson.dumps(detail).decode(),
    )


def _public_config(key: KeyConfig, revoked: set[str]) -> dict[str, Any]:
    return {
        "id": key.id, "source": "config", "tenant": key.tenant, "scopes": sorted(key.scopes),
        "models": sorted(key.models) if key.models is not None else None,
        "datasets": sorted(key.datasets) if key.datasets is not None else None,
        "limits": [r.text for r in key.limits] if key.limits else None,
        "budget": {"tokens": [r.text for r in key.budget_tokens]} if key.budget_tokens else None,
        "name": key.name, "expires_at": None, "revoked": key.id in revoked,
    }  # fmt: skip


async def _refresh(request: web.Request) -> None:
    """This replica sees its own change at once; the others within their poll."""
    try:
        await request.app[key_sync_key].refresh()
    except StoreUnavailable:
        pass


async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request)
    unknown = sorted(set(body) - EDITABLE - {"tenant"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", param=unknown[0])
    tenant = body.get("tenant")
    if not isinstance(tenant, str) or not tenant.strip():
        raise BadRequest("'tenant' must be a non-empty string", param="tenant")
    check_text(tenant, "tenant", max_length=128)
    if "scopes" not in body:
        raise BadRequest("'scopes' is required", param="scopes")
    secret = new_key()
    key = StoredKey(
        id=f"key_{secrets.token_hex(8)}", digest=key_digest(secret), tenant=tenant, scopes=[]
    )
    apply_changes(key, body)
    if any(k.id == key.id for k in request.app[config_key].keys):
        raise Conflict("key id already in use")
    await _service(request).keys.save(key, new=True)
    _audit(request, "key.create", key.id, {"after": public_stored(key)})
    await _refresh(request)
    return _json({**public_stored(key), "key": secret}, status=201)


async def _stored_or_404(request: web.Request) -> StoredKey:
    key_id = key_id_param(request)
    key = await _service(request).keys.get(key_id)
    if key is None:
        if any(k.id == key_id for k in request.app[config_key].keys):
            raise Conflict(
                f"{key_id!r} is defined in the config file; change it there", code="config_key"
            )
        raise NotFound(f"no key {key_id!r}", code="key_not_found")
    return key


async def list_keys(request: web.Request) -> web.Response:
    tenant = text_param(request, "tenant")
    service = _service(request)
    revoked = await service.keys.revoked_config_ids()
    data = [_public_config(k, revoked) for k in request.app[config_key].keys]
    data += [public_stored(k) for k in await service.keys.all()]
    if tenant is not None:
        data = [k for k in data if k["tenant"] == tenant]
    return _json({"object": "list", "data": sorted(data, key=lambda k: k["id"])})


async def get_key(request: web.Request) -> web.Response:
    key_id = key_id_param(request)
    for configured in request.app[config_key].keys:
        if configured.id == key_id:
            return _json(
                _public_config(configured, await _service(request).keys.revoked_config_ids())
            )
    key = await _service(request).keys.get(key_id)
    if key is None:
        raise NotFound(f"no key {key_id!r}", code="key_not_found")
    return _json(public_stored(key))


async def patch_key(request: web.Request) -> web.Response:
    body = await read_json(request)
    unknown = sorted(set(body) - EDITABLE)
    if unknown:
        raise BadRequest(f"unknown or unchangeable field {unknown[0]!r}", param=unknown[0])
    key = await _stored_or_404(request)
    before = public_stored(key)
    apply_changes(key, body)
    key.updated_at = time.time()
    await _service(request).keys.save(key, new=False)
    _audit(request, "key.update", key.id, {"before": before, "after": public_stored(key)})
    await _refresh(request)
    return _json(public_stored(key))


async def revoke_key(request: web.Request) -> web.Response:
    """Idempotent: revoking a revoked key changes nothing and answers its first revocation."""
    key_id = key_id_param(request)
    service = _service(request)
    now = time.time()
    if any(k.id == key_id for k in request.app[config_key].keys):
        revoked_at = await service.keys.revoke_config_key(key_id, now)
        if revoked_at == now:
            _audit(request, "key.revoke", key_id, {"source": "config"})
            await _refresh(request)
        return _json({"id": key_id, "source": "config", "revoked": True, "revoked_at": revoked_at})
    key = await _stored_or_404(request)
    if key.revoked_at is None:
        key.revoked_at = now
        key.updated_at = now
        await service.keys.save(key, new=False)
        _audit(request, "key.revoke", key.id, {"source": "store"})
        await _refresh(request)
    return _json(public_stored(key))


async def rotate_key(request: web.Request) -> web.Response:
    body = await read_json(request) if request.can_read_body else {}
    grace = body.get("grace_s", 0)
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or not 0 <= grace <= MAX_GRACE_S
    ):
        raise BadRequest(f"'grace_s' must be a number from 0 to {MAX_GRACE_S}", param="grace_s")
    key = await _stored_or_404(request)
    if key.revoked_at is not None:
        raise Conflict("a revoked key cannot be rotated", code="key_revoked")
    secret = new_key()
    now = time.time()
    key.previous_digest = key.digest if grace > 0 else None
    key.previous_valid_until = now + grace if grace > 0 else None
    key.digest = key_digest(secret)
    key.updated_at = now
    await _service(request).keys.save(key, new=False)
    _audit(request, "key.rotate", key.id, {"grace_s": grace})
    await _refresh(request)
    return _json({**public_stored(key), "key": secret}, status=201)


async def usage(request: web.Request) -> web.Response:
    now = time.time()
    start = time_param(request, "from", now - 30 * 86400)
    end = time_param(request, "to", now + 1)
    groups = [g for g in request.query.get("group_by", "key").split(",") if g]
    if not groups or any(g not in _GROUPS for g in groups):
        raise BadRequest(f"group_by: one or more of {', '.join(_GROUPS)}", param="group_by")
    columns = [_GROUPS[g] for g in dict.fromkeys(groups)]
    where = ["at >= ?", "at < ?"]
    params: list[Any] = [start, end]
    for name, column in (("tenant", "tenant"), ("key_id", "key_id")):
        value = text_param(request, name)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = (
        f"SELECT {', '.join(columns)}, count(*), "
        "sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END), sum(tokens_in), sum(tokens_out), "
        "sum(rows_out), sum(bytes_out), sum(cache_hit), sum(tokens_cached), "
        "sum(tokens_reasoning), sum(audio_bytes), sum(images), sum(audio_seconds) "
        f"FROM tollway_usage WHERE {' AND '.join(where)} "
        f"GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
    )
    rows = await _service(request).store.fetch(sql, params)
    names = list(dict.fromkeys(groups))
    fields = (
        "requests", "errors", "tokens_in", "tokens_out", "rows", "bytes_out", "cache_hits",
        "tokens_cached", "tokens_reasoning", "audio_bytes", "images",
    )  # fmt: skip
    data = [
        {**dict(zip(names, row[: len(names)], strict=True)),
         **{f: int(v or 0) for f, v in zip(fields, row[len(names):-1], strict=True)},
         "audio_seconds": round(float(row[-1] or 0), 3)}
        for row in rows
    ]  # fmt: skip
    return _json({"object": "list", "data": data})


async def audit(request: web.Request) -> web.Response:
    now = time.time()
    where = ["at >= ?", "at < ?"]
    params: list[Any] = [
        time_param(request, "from", now - 30 * 86400),
        time_param(request, "to", now + 1),
    ]
    for name in ("action", "key_id"):
        value = text_param(request, name)
        if value is not None:
            where.append(f"{name} = ?")
            params.append(value)
    limit = limit_param(request, "limit", 100, 1000)
    service = _service(request)
    await service.audit.flush()
    rows = await service.store.fetch(
        f"SELECT at, action, key_id, actor, request_id, client_ip, detail FROM tollway_audit "
        f"WHERE {' AND '.join(where)} ORDER BY at DESC LIMIT {limit}",
        params,
    )
    names = ("at", "action", "key_id", "actor", "request_id", "client_ip", "detail")
    data = [dict(zip(names, row, strict=True)) for row in rows]
    for entry in data:
        if entry["detail"]:
            entry["detail"] = orjson.loads(entry["detail"])
    return _json({"object": "list", "data": data})


class StoreDown(BackendUnavailable):
    default_code = "state_store_unavailable"


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _store_errors(handler: Handler) -> Handler:
    """The state store's failures as short answers; the driver's text stays in the log."""

    @wraps(handler)
    async def answer(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except StoreUnavailable:
            raise StoreDown(
                "the state store is unavailable; retry shortly", retry_after=1
            ) from None
        except StoreRejected:
            raise BadRequest("the state store refused this value", code="invalid_value") from None

    return answer


def routes() -> list[RouteDef]:
    table = (
        ("POST", "/admin/keys", create_key, "Create a key; the secret is shown once", CREATE_KEY),
        ("GET", "/admin/keys", list_keys, "Keys from the config and the store", None),
        ("GET", "/admin/keys/{id}", get_key, "One key", None),
        ("PATCH", "/admin/keys/{id}", patch_key, "Change a stored key", PATCH_KEY),
        ("POST", "/admin/keys/{id}/revoke", revoke_key, "Revoke a key on every replica", None),
        ("POST", "/admin/keys/{id}/rotate", rotate_key, "A new secret, the old one in grace",
         ROTATE_KEY),
        ("GET", "/admin/usage", usage, "Usage, aggregated", None),
        ("GET", "/admin/audit", audit, "Admin actions and refused credentials", None),
    )  # fmt: skip
    return [
        RouteDef(
            method,
            path,
            _store_errors(handler),
            RouteSpec("admin", "admin", True, summary, request_body=body),
        )
        for method, path, handler, summary, body in table
    ]
