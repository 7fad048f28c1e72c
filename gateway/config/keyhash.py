"""How API keys are made, stored and compared: stored only as ``sha256:<hex>``, never the
key itself."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["hash_key", "key_digest", "new_key"]


def key_digest(key: str) -> str:
    """The hex sha256 of a key: what lookups are made by."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def hash_key(key: str) -> str:
    """The stored form of a key, as written in the config: ``sha256:<hex>``."""
    return "sha256:" + key_digest(key)


def new_key() -> str:
    """A fresh high-entropy API key (256 bits, URL-safe)."""
    return "tw_" + secrets.token_urlsafe(32)
