"""Who is calling: the API key from ``Authorization: Bearer``, ``X-API-Key`` or, on OData
routes where BI tools can send nothing else, HTTP Basic with the key as the password.

Public routes (probes, metrics) pass without a key. A key this replica does not know is
looked up in the state store once (`gateway.edge.key_lookup`), so a key made on another
replica a moment ago works. A missing or unknown key is 401; a key without the route's
scope is 403.
"""

from __future__ import annotations

import binascii
import logging
from base64 import b64decode

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config import config_key
from gateway.edge.client_ip import request_ip
from gateway.edge.error_answers import route_spec
from gateway.edge.key_sync import unknown_keys_key
from gateway.edge.keytable import key_table_key
from gateway.edge.principal import Principal, principal_key
from gateway.edge.request_id import request_id_key
from gateway.errors import Forbidden, Unauthorized
from gateway.ops.logs import log_context
from gateway.routing import route_spec_key
from gateway.state.service import state_service_key

__all__ = ["auth_middleware", "presented_key"]

_log = logging.getLogger("tollway.auth")


def presented_key(request: web.Request, *, basic: bool) -> str | None:
    """The key the caller sent, if any, without judging it."""
    authorization = request.headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and value.strip():
            return value.strip()
        if scheme == "basic" and basic:
            try:
                decoded = b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            _user, _, password = decoded.partition(":")
            return password or None
    api_key = request.headers.get("X-API-Key")
    return api_key.strip() if api_key and api_key.strip() else None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    spec = route_spec(request)
    if spec is None:
        return await handler(request)
    request[route_spec_key] = spec
    if spec.scope is None:
        return await handler(request)
    odata = spec.route_class == "odata"
    challenge = {"WWW-Authenticate": 'Basic realm="tollway"'} if odata else {}
    key = presented_key(request, basic=odata)
    if key is None and odata:
        # Power Query's ApiKeyName: the key as a named query parameter, when configured.
        param = request.app[config_key].odata.key_param
        key = request.query.get(param) if param else None
    if key is None:
        raise Unauthorized("no API key: send Authorization: Bearer <key>", headers=challenge)
    table = request.app[key_table_key]
    principal = table.lookup(key)
    if principal is None:
        principal = await _looked_up(request, key)
    if principal is None:
        key_id, reason = table.why_refused(key)
        _audit_refusal(request, reason, key_id)
        message = "this API key has been revoked" if reason == "revoked" else "invalid API key"
        if reason == "expired":
            message = "this API key has expired"
        raise Unauthorized(message, headers=challenge, should_retry=False)
    request[principal_key] = principal
    context = log_context.get()
    if context is not None:
        context["key_id"] = principal.key_id
        context["tenant"] = principal.tenant
    if spec.scope not in principal.scopes:
        _log.info("scope refused", extra={"scope": spec.scope})
        _audit_refusal(request, "scope_refused", principal.key_id)
        raise Forbidden(
            f"this key lacks the {spec.scope!r} scope", code="scope_missing", should_retry=False
        )
    return await handler(request)


async def _looked_up(request: web.Request, key: str) -> Principal | None:
    """A key this replica has not seen may have been made on another a moment ago."""
    unknown = request.app.get(unknown_keys_key)
    if unknown is None or request.app[key_table_key].why_refused(key)[1] != "unknown":
        return None
    return await unknown.look_up(key, request_ip(request))


def _audit_refusal(request: web.Request, reason: str, key_id: str | None) -> None:
    service = request.app.get(state_service_key)
    if service is not None:
        service.record_refusal(
            reason,
            key_id=key_id,
            request_id=request.get(request_id_key),
            client_ip=request_ip(request),
        )
