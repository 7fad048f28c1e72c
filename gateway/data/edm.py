"""Backend column types as OData Edm types, the one mapping the feeds and the filter
compiler share.

Naive timestamps (``timestamp`` without a time zone) are taken as UTC: they are served as
``Edm.DateTimeOffset`` with a ``+00:00`` offset, and filters compare them with the UTC
instant of a literal, whatever offset the literal was written with.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.data.filter_tree import (
    EDM_BOOLEAN,
    EDM_DATE,
    EDM_DATETIMEOFFSET,
    EDM_DECIMAL,
    EDM_DOUBLE,
    EDM_INT64,
    EDM_STRING,
    EDM_TIMEOFDAY,
)

__all__ = ["edm_type", "is_text", "is_zoned"]

_INTEGERS: Final = frozenset(
    {"bigint", "int8", "integer", "int", "int4", "smallint", "int2", "tinyint", "ubigint",
     "uinteger", "usmallint", "utinyint"}
)  # fmt: skip
_DOUBLES: Final = frozenset({"double", "float", "float8", "real", "float4", "double precision"})
_TEXT: Final = frozenset(
    {"text", "varchar", "character varying", "bpchar", "char", "character", "name", "string"}
)
_ZONED: Final = frozenset(
    {"timestamptz", "timestamp with time zone", "timestamp_tz", "timestamptz(6)"}
)


def _kind(backend_type: str | None) -> str:
    return (backend_type or "").strip().lower()


def edm_type(backend_type: str | None) -> tuple[str, dict[str, str]]:
    """The Edm type (and facets) for a backend column type."""
    kind = _kind(backend_type)
    if match := re.match(r"(?:decimal|numeric)\((\d+),\s*(\d+)\)", kind):
        return EDM_DECIMAL, {"Precision": match.group(1), "Scale": match.group(2)}
    if kind.startswith(("decimal", "numeric")) or kind == "hugeint":
        return EDM_DECIMAL, {"Scale": "variable"}
    if kind in _INTEGERS:
        return EDM_INT64, {}
    if kind in _DOUBLES:
        return EDM_DOUBLE, {}
    if kind in ("boolean", "bool"):
        return EDM_BOOLEAN, {}
    if kind == "date":
        return EDM_DATE, {}
    if kind.startswith("timestamp"):
        return EDM_DATETIMEOFFSET, {}
    if kind in ("time", "time without time zone"):
        return EDM_TIMEOFDAY, {}
    return EDM_STRING, {}


def is_zoned(backend_type: str | None) -> bool:
    """Whether a timestamp column holds instants (``timestamptz``), not wall-clock UTC."""
    kind = _kind(backend_type)
    return kind in _ZONED or kind.startswith("timestamp with time zone")


def is_text(backend_type: str | None) -> bool:
    """Whether the column is text already (else string functions see it cast to text)."""
    kind = _kind(backend_type)
    return kind in _TEXT or kind.startswith(("varchar", "character varying", "char("))
