"""The admin API's request bodies as published in ``/openapi.json`` (and checked against
it before a handler runs); the handlers' own checks (`gateway.state.key_changes`) then
judge the values: known scopes, parseable rates, times between 2000 and 2200."""

from __future__ import annotations

from typing import Any, Final

from gateway.config.model import SCOPES

__all__ = ["CREATE_KEY", "PATCH_KEY", "ROTATE_KEY"]

_NAMES: Final = {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}}
_RATES: Final = {"type": ["array", "null"], "minItems": 1, "items": {"type": "string"}}
_KEY_FIELDS: Final[dict[str, Any]] = {
    "scopes": {"type": "array", "minItems": 1, "items": {"enum": list(SCOPES)}},
    "models": _NAMES,
    "datasets": _NAMES,
    "limits": _RATES,
    "budget": {
        "type": ["object", "null"],
        "required": ["tokens"],
        "properties": {"tokens": _RATES},
        "additionalProperties": False,
    },
    "expires_at": {
        "type": ["number", "string", "null"],
        "description": "unix seconds or ISO 8601, between 2000 and 2200, in the future",
    },
    "name": {"type": ["string", "null"], "maxLength": 200},
}
CREATE_KEY: Final = {
    "type": "object",
    "required": ["tenant", "scopes"],
    "properties": {"tenant": {"type": "string", "minLength": 1, "maxLength": 128}, **_KEY_FIELDS},
    "additionalProperties": False,
}
PATCH_KEY: Final = {"type": "object", "properties": _KEY_FIELDS, "additionalProperties": False}
ROTATE_KEY: Final = {
    "type": "object",
    "properties": {"grace_s": {"type": "number", "minimum": 0, "maximum": 30 * 86400}},
    "additionalProperties": False,
}
