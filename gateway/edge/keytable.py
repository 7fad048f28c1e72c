"""The in-memory table the auth middleware looks keys up in, by sha256 of the key.

The hot path never waits on a store: lookups are one hash and one dict access. Whoever
owns the key source (config now, the state store later) replaces the table's contents.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from aiohttp import web

from gateway.config import KeyConfig
from gateway.config.keyhash import key_digest
from gateway.edge.principal import Principal

__all__ = ["KeyTable", "principal_from_config"]


def principal_from_config(key: KeyConfig) -> Principal:
    return Principal(
        key_id=key.id,
        tenant=key.tenant,
        scopes=key.scopes,
        models=key.models,
        datasets=key.datasets,
        limits=key.limits,
        budget_tokens=key.budget_tokens,
        name=key.name,
        source="config",
    )


class KeyTable:
    """Digest → principal. Replaced whole, read without locks."""

    __slots__ = ("_by_digest", "_refused")

    def __init__(self, entries: Mapping[str, Principal] | None = None) -> None:
        self._by_digest: Mapping[str, Principal] = dict(entries or {})
        self._refused: Mapping[str, tuple[str, str]] = {}

    @classmethod
    def from_config(cls, keys: Iterable[KeyConfig]) -> KeyTable:
        return cls({k.hash.removeprefix("sha256:"): principal_from_config(k) for k in keys})

    def replace(
        self, entries: Mapping[str, Principal], refused: Mapping[str, tuple[str, str]] | None = None
    ) -> None:
        """New contents; `refused` maps digests of revoked keys to (key id, reason)."""
        self._by_digest = dict(entries)
        self._refused = dict(refused or {})

    def why_refused(self, key: str, now: float | None = None) -> tuple[str | None, str]:
        """For an audit line: the key id (when known) and why `key` was refused."""
        digest = key_digest(key)
        known = self._by_digest.get(digest)
        if known is not None and known.expires_at is not None:
            if (now or time.time()) >= known.expires_at:
                return known.key_id, "expired"
        found = self._refused.get(digest)
        if found is not None:
            return found
        return None, "unknown"

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, key: str, now: float | None = None) -> Principal | None:
        """The principal of `key`, or None if it is unknown or expired."""
        # Looking up by digest is what keeps this constant-time in the sense that matters:
        # a caller controls the key, not its sha256, so timing of the dict's string
        # comparison tells nothing about how close a guess was to a stored key.
        principal = self._by_digest.get(key_digest(key))
        if principal is None:
            return None
        if principal.expires_at is not None and (now or time.time()) >= principal.expires_at:
            return None
        return principal


key_table_key = web.AppKey("key_table", KeyTable)
