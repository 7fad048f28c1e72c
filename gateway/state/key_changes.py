"""Changes to a stored key, checked field by field: the rules the admin API and
``tollway keys`` share, and the public view of a stored key (never its hash).

Text that names things (tenants, key names, ids, models, datasets) holds no control
characters (NUL, line breaks, bidirectional overrides: what corrupts logs, CSV exports
and the console); times lie between 2000 and 2200.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Any, Final

from gateway.config.model import SCOPES
from gateway.config.rates import parse_rate
from gateway.errors import BadRequest
from gateway.state.store import StoredKey

__all__ = [
    "EARLIEST",
    "EDITABLE",
    "LATEST",
    "MAX_GRACE_S",
    "apply_changes",
    "check_text",
    "public_stored",
    "time_value",
]

MAX_GRACE_S: Final = 30 * 86400
EARLIEST: Final = 946_684_800.0
"""2000-01-01T00:00:00Z: no time Tollway is given may be earlier."""
LATEST: Final = 7_258_118_400.0
"""2200-01-01T00:00:00Z: nor later."""
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNIX_TIME: Final = re.compile(r"[0-9]{1,11}(\.[0-9]{1,9})?")
EDITABLE: Final = frozenset(
    {"scopes", "models", "datasets", "limits", "budget", "expires_at", "name"}
)
_SCOPES: Final = frozenset(SCOPES)


def check_text(value: str, name: str, *, max_length: int = 200) -> str:
    """`value` if it is a name Tollway may store and show: no control characters."""
    if len(value) > max_length:
        raise BadRequest(f"'{name}' must be at most {max_length} characters", param=name)
    if _CONTROL.search(value):
        raise BadRequest(f"'{name}' must not contain control characters", param=name)
    return value


def time_value(value: Any, name: str) -> float:
    """A time given as unix seconds (a number, or digits in a query string) or as an ISO
    8601 text, between 2000 and 2200; anything else (``nan``, ``1e400``, ``2**70``, year
    9999) is a 400 naming `name`."""
    at: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            at = float(value)
        except OverflowError:
            at = None
    elif isinstance(value, str):
        if _UNIX_TIME.fullmatch(value):
            at = float(value)
        else:
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise BadRequest(
                    f"'{name}' must be a unix time or an ISO 8601 time", param=name
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            at = parsed.timestamp() if 2000 <= parsed.year < 2200 else None
    else:
        raise BadRequest(f"'{name}' must be a unix time or an ISO 8601 time", param=name)
    if at is None or not math.isfinite(at) or not EARLIEST <= at <= LATEST:
        raise BadRequest(f"'{name}' must be a time between the years 2000 and 2200", param=name)
    return at


def strings_field(
    body: dict[str, Any], name: str, *, allowed: frozenset[str] | None = None
) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequest(f"'{name}' must be a list of strings", param=name)
    for item in value:
        check_text(item, name)
    if allowed is not None and (bad := sorted(set(value) - allowed)):
        raise BadRequest(
            f"'{name}': unknown {bad[0]!r}; allowed: {', '.join(sorted(allowed))}", param=name
        )
    return list(dict.fromkeys(value))


def rates_field(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise BadRequest(
            f"'{name}' must be a non-empty list of rates like \"60/minute\"", param=name
        )
    for text in value:
        try:
            parse_rate(text)
        except ValueError as exc:
            raise BadRequest(f"'{name}': {exc}", param=name) from None
    return list(value)


def expiry_field(value: Any) -> float | None:
    if value is None:
        return None
    at = time_value(value, "expires_at")
    if at <= time.time():
        raise BadRequest("'expires_at' is in the past", param="expires_at")
    return at


def apply_changes(key: StoredKey, body: dict[str, Any]) -> None:
    """Validate every field first, then change `key`: nothing is half-applied."""
    changes: dict[str, Any] = {}
    if "scopes" in body:
        scopes = strings_field(body, "scopes", allowed=_SCOPES)
        if not scopes:
            raise BadRequest("'scopes' must name at least one scope", param="scopes")
        changes["scopes"] = scopes
    for name in ("models", "datasets"):
        if name in body:
            changes[name] = strings_field(body, name)
    if "limits" in body:
        changes["limits"] = rates_field(body["limits"], "limits")
    if "budget" in body:
        budget = body["budget"]
        if budget is not None and (not isinstance(budget, dict) or set(budget) != {"tokens"}):
            raise BadRequest('\'budget\' is {"tokens": ["1000000/day", …]} or null', param="budget")
        changes["budget"] = rates_field(budget["tokens"], "budget.tokens") if budget else None
    if "expires_at" in body:
        changes["expires_at"] = expiry_field(body["expires_at"])
    if "name" in body:
        name = body["name"]
        if name is not None and not isinstance(name, str):
            raise BadRequest("'name' must be a string of at most 200 characters", param="name")
        changes["name"] = None if name is None else check_text(name, "name")
    for field, value in changes.items():
        setattr(key, field, value)


def public_stored(key: StoredKey) -> dict[str, Any]:
    return {
        "id": key.id, "source": "store", "tenant": key.tenant, "scopes": key.scopes,
        "models": key.models, "datasets": key.datasets, "limits": key.limits,
        "budget": {"tokens": key.budget} if key.budget else None, "name": key.name,
        "expires_at": key.expires_at, "revoked": key.revoked_at is not None,
        "revoked_at": key.revoked_at, "created_at": key.created_at, "updated_at": key.updated_at,
        "rotation_grace_until": key.previous_valid_until if key.previous_digest else None,
    }  # fmt: skip
