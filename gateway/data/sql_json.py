"""Query answers as JSON, in one pass of orjson.

Values: dates, times and timestamps as ISO 8601 strings; decimals as strings, exact
(a JSON number would round through a double); intervals as ISO 8601 durations; bytes
as base64; NaN and infinities as null (JSON has no such numbers); UUIDs as strings.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
from collections.abc import Sequence
from typing import Any

import orjson

from backends.base import Column

__all__ = ["encode_result", "json_value"]

_OPTIONS = orjson.OPT_PASSTHROUGH_SUBCLASS


def json_value(value: Any) -> Any:
    """What orjson cannot encode itself, made JSON-safe."""
    if isinstance(value, decimal.Decimal):
        return None if not value.is_finite() else format(value, "f")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.timedelta):
        return _iso_duration(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def encode_result(
    columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, truncated: bool
) -> bytes:
    return orjson.dumps(
        {
            "columns": [{"name": c.name, "type": c.type} for c in columns],
            "rows": rows,
            "row_count": len(rows),
            "truncated": truncated,
        },
        default=json_value,
        option=_OPTIONS,
    )


def _iso_duration(delta: dt.timedelta) -> str:
    sign = "-" if delta < dt.timedelta(0) else ""
    delta = abs(delta)
    seconds = delta.seconds + delta.microseconds / 1_000_000
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{sign}P{delta.days}DT{text}S"
