"""Config values encrypted with Fernet under ``TOLLWAY_SECRET_KEY``.

The variable may hold several comma-separated keys: the first encrypts, all decrypt, so
keys can be rotated without re-encrypting every value at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from backends.base import OptionError

__all__ = ["decrypt_option", "encrypt", "fernet"]


def fernet(keys: str | None = None) -> MultiFernet:
    raw = keys if keys is not None else os.environ.get("TOLLWAY_SECRET_KEY", "")
    parts = [k.strip() for k in raw.split(",") if k.strip()]
    if not parts:
        raise ValueError("TOLLWAY_SECRET_KEY is not set")
    try:
        return MultiFernet([Fernet(k) for k in parts])
    except ValueError:
        raise ValueError("TOLLWAY_SECRET_KEY holds a key that is not a Fernet key") from None


def encrypt(value: str, keys: str | None = None) -> str:
    return fernet(keys).encrypt(value.encode()).decode()


def decrypt_option(options: Mapping[str, Any], key: str) -> str:
    token = options.get(key)
    if not isinstance(token, str):
        raise OptionError(key, "expected a Fernet token (tollway secrets encrypt)")
    try:
        return fernet().decrypt(token.encode()).decode()
    except ValueError as exc:
        raise OptionError(key, str(exc)) from None
    except InvalidToken:
        raise OptionError(key, "cannot be decrypted with TOLLWAY_SECRET_KEY") from None
