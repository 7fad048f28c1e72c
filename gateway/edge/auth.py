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
from typing import Final

from aiohttp import web

from gateway.edge.client_ip import request_ip
from gateway.edge.key_lookup import UnknownKeys
from gateway.edge.keytable import KeyTable
from gateway.edge.principal import Principal
from gateway.edge.request_id import request_id_key
from gateway.errors import Forbidden, Unauthorized
from gateway.routing import RouteSpec
from gateway.state.service import StateService

__all__ = ["Authenticator", "presented_key"]

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


class Authenticator:
    """Who is calling, for routes that need a key: the principal, or 401/403."""

    __slots__ = ("_key_param", "_service", "_table", "_unknown")

    def __init__(self, table: KeyTable, key_param: str | None) -> None:
        self._table = table
        self._key_param = key_param
        self._service: StateService | None = None
        self._unknown: UnknownKeys | None = None

    def start(self, service: StateService | None, unknown: UnknownKeys | None) -> None:
        """Once the app has started: refused credentials are recorded in the audit log of
        `service`, and keys this replica does not know are asked of `unknown`."""
        self._service = service
        self._unknown = unknown

    async def authenticate(
        self, request: web.Request, spec: RouteSpec, key: str | None
    ) -> Principal:
        """The key's principal, or 401. `key` is what the caller presented
        (`presented_key`); OData routes also take HTTP Basic and, when configured, the
        key as a query parameter."""
        odata = spec.route_class == "odata"
        challenge = _CHALLENGE if odata else {}
        if odata:
            key = presented_key(request, basic=True)
            if key is None and self._key_param:
                # Power Query's ApiKeyName: the key as a named query parameter.
                key = request.query.get(self._key_param)
        if key is None:
            raise Unauthorized("no API key: send Authorization: Bearer <key>", headers=challenge)
        principal = self._table.lookup(key)
        if principal is None:
            principal = await self._looked_up(request, key)
        if principal is None:
            key_id, reason = self._table.why_refused(key)
            self._audit_refusal(request, reason, key_id)
            message = "this API key has been revoked" if reason == "revoked" else "invalid API key"
            if reason == "expired":
                message = "this API key has expired"
            raise Unauthorized(message, headers=challenge, should_retry=False)
        return principal

    async def _looked_up(self, request: web.Request, key: str) -> Principal | None:
        """A key this replica has not seen may have been made on another a moment ago."""
        if self._unknown is None or self._table.why_refused(key)[1] != "unknown":
            return None
        return await self._unknown.look_up(key, request_ip(request))

    def check_scope(self, request: web.Request, spec: RouteSpec, principal: Principal) -> None:
        """403 for a key without the route's scope."""
        if spec.scope not in principal.scopes:
            _log.info("scope refused", extra={"scope": spec.scope})
            self._audit_refusal(request, "scope_refused", principal.key_id)
            raise Forbidden(
                f"this key lacks the {spec.scope!r} scope", code="scope_missing", should_retry=False
            )

    def _audit_refusal(self, request: web.Request, reason: str, key_id: str | None) -> None:
        if self._service is not None:
            self._service.record_refusal(
                reason,
                key_id=key_id,
                request_id=request.get(request_id_key),
                client_ip=request_ip(request),
            )


_CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="tollway"'}
