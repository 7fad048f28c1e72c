"""The in-memory table the auth middleware looks keys up in, by sha256 of the key.

The hot path never waits on a store: lookups are one hash and one dict access. Whoever
owns the key source (the config, the state store's sync) replaces the table's contents;
a key looked up on first use (`gateway.edge.key_lookup`) is added between refreshes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from aiohttp import web

from gateway.config import KeyConfig
from gateway.config.keyhash import key_digest
from gateway.config.rates import parse_rate
from gateway.edge.principal import Principal
from gateway.state.store import StoredKey

__all__ = ["KeyTable", "principal_from_config", "principal_from_stored"]


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


def principal_from_stored(key: StoredKey, *, expires_at: float | None = None) -> Principal:
    return Principal(
        key_id=key.id,
        tenant=key.tenant,
        scopes=frozenset(key.scopes),
        models=frozenset(key.models) if key.models is not None else None,
        datasets=frozenset(key.datasets) if key.datasets is not None else None,
        limits=tuple(parse_rate(r) for r in key.limits) if key.limits else None,
        budget_tokens=tuple(parse_rate(r) for r in key.budget) if key.budget else (),
        name=key.name,
        expires_at=expires_at if expires_at is not None else key.expires_at,
        source="store",
    )


class KeyTable:
    """Digest → principal. Replaced whole, read without locks."""

    __slots__ = ("_by_digest", "_refused")

    def __init__(self, entries: Mapping[str, Principal] | None = None) -> None:
        self._by_digest: dict[str, Principal] = dict(entries or {})
        self._refused: dict[str, tuple[str, str]] = {}

    @classmethod
    def from_config(cls, keys: Iterable[KeyConfig]) -> KeyTable:
        return cls({k.hash.removeprefix("sha256:"): principal_from_config(k) for k in keys})

    def replace(
        self, entries: Mapping[str, Principal], refused: Mapping[str, tuple[str, str]] | None = None
    ) -> None:
        """New contents; `refused` maps digests of revoked keys to (key id, reason)."""
        self._by_digest = dict(entries)
        self._refused = dict(refused or {})

    def add(self, digest: str, principal: Principal) -> None:
        """One key learnt between refreshes (looked up in the store on first use)."""
        self._by_digest[digest] = principal

    def refuse(self, digest: str, key_id: str, reason: str) -> None:
        self._refused[digest] = (key_id, reason)

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
        return self.lookup_digest(key_digest(key), now)

    def lookup_digest(self, digest: str, now: float | None = None) -> Principal | None:
        principal = self._by_digest.get(digest)
        if principal is None:
            return None
        if principal.expires_at is not None and (now or time.time()) >= principal.expires_at:
            return None
        return principal


key_table_key = web.AppKey("key_table", KeyTable)
