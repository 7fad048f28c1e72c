"""One column's values as JSON text, written in SQL, byte for byte what the feeds' Python
encoder (orjson, `gateway.data.odata_page`) writes for the value the driver returns.

`column_json` gives, for a backend column type, an SQL expression over the column that
yields the value's JSON text, NULL for NULL (the caller writes ``null``), or None where
SQL cannot match the Python encoder exactly: the page is then encoded in Python.

What is matched, per Edm type (both backends unless said):

* Int64: the digits; a string under ``IEEE754Compatible``.
* Decimal: the exact digits with the column's scale (``5.00``), a JSON number, or a
  string under ``IEEE754Compatible``; NaN and infinities as null.
* Double: the shortest text that reads back as the same double, in orjson's notation
  (``1.0``, ``0.00001``, ``1e-7``, ``1e+16``); NaN and infinities as null. On Postgres, a
  value of magnitude 2^53 or more sends the page to Python (the second expression of
  `column_json`): Postgres writes some of those with more digits than the shortest.
* Boolean, String (every escape orjson makes; DuckDB's upper-case ``\\u000B`` hex is
  lowered afterwards by `gateway.data.odata_json`), UUIDs as strings.
* Date ``2026-01-09``; DateTimeOffset ``2026-01-09T10:30:00+00:00``, six fractional digits
  when there are microseconds: naive timestamps are UTC and ``timestamptz`` is written at
  UTC (on DuckDB only when the session's time zone is UTC, as the driver then returns UTC
  offsets). Infinities: Postgres writes the driver's ``datetime.max``/``min``; on DuckDB
  they, and timestamps Python cannot hold (BC, after 9999), send the page to Python
  (rare values, and a cheaper expression for every other). TimeOfDay
  ``10:30:00[.ffffff]``.

Every other type (intervals, blobs, lists, structs, JSON, enums, ``hugeint``, ``char(n)``,
times with a zone…) is not written here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from gateway.data.edm import edm_type
from gateway.data.filter_tree import EDM_DECIMAL, EDM_INT64

__all__ = ["UTC_ZONES", "column_json", "is_sized", "quoted"]

UTC_ZONES: Final = frozenset(
    {"utc", "etc/utc", "gmt", "etc/gmt", "universal", "etc/universal", "zulu", "etc/zulu",
     "uct", "etc/uct", "greenwich", "etc/greenwich", "gmt0", "etc/gmt0", "gmt+0", "gmt-0",
     "etc/gmt+0", "etc/gmt-0"}
)  # fmt: skip
"""Time zone names whose offset is always zero: a DuckDB session in one of them hands
``timestamptz`` values to Python with a ``+00:00`` offset."""

_DUCK_INTEGERS: Final = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
)
_PG_INTEGERS: Final = frozenset({"int2", "int4", "int8"})
_DUCK_DECIMAL: Final = re.compile(r"DECIMAL\(\d+,\s*\d+\)$")
_DUCK_TEXT: Final = frozenset({"VARCHAR"})
_PG_TEXT: Final = frozenset({"text", "varchar"})
_MAX_UTC: Final = '"9999-12-31T23:59:59.999999+00:00"'
_MIN_UTC: Final = '"0001-01-01T00:00:00+00:00"'

Render = Callable[[str], str]


def quoted(name: str) -> str:
    """`name` as an SQL identifier (field names are OData identifiers: no quotes in them)."""
    return '"' + name.replace('"', '""') + '"'


def _text(expression: str) -> str:
    """The JSON string of `expression`, which holds nothing JSON escapes."""
    return f"'\"' || {expression} || '\"'"


def _duck_double(c: str) -> str:
    t = f"CAST(CAST({c} AS DOUBLE) AS VARCHAR)"
    return (
        f"CASE WHEN NOT isfinite({c}) THEN 'null' "
        # DuckDB writes doubles as Python's repr does; orjson writes 1.5e-05 as 0.000015
        # and e-07 as e-7.
        f"WHEN contains({t}, 'e-05') THEN (CASE WHEN {c} < 0 THEN '-0.0000' ELSE '0.0000' END)"
        f" || replace(split_part(ltrim({t}, '-'), 'e', 1), '.', '') "
        f"WHEN contains({t}, 'e-0') THEN replace({t}, 'e-0', 'e-') ELSE {t} END"
    )


def _pg_double(c: str) -> str:
    t = f"CAST({c} AS DOUBLE PRECISION)::text"
    mantissa = f"replace(ltrim(split_part({t}, 'e', 1), '-'), '.', '')"
    sign = f"(CASE WHEN {c} < 0 THEN '-' ELSE '' END)"
    fraction = f"substr({mantissa}, 17)"
    return (
        f"CASE WHEN {t} IN ('NaN', 'Infinity', '-Infinity') THEN 'null' "
        # Postgres writes 1 and 1e+15 where orjson writes 1.0 and 1000000000000000.0,
        # 1e-05 where orjson writes 0.00001, and e-07 where orjson writes e-7.
        f"WHEN strpos({t}, 'e') = 0 THEN "
        f"(CASE WHEN strpos({t}, '.') = 0 THEN {t} || '.0' ELSE {t} END) "
        f"WHEN strpos({t}, 'e+15') > 0 THEN {sign} || rpad(left({mantissa}, 16), 16, '0') || "
        f"'.' || (CASE WHEN {fraction} = '' THEN '0' ELSE {fraction} END) "
        f"WHEN strpos({t}, 'e-05') > 0 THEN {sign} || '0.0000' || {mantissa} "
        f"WHEN strpos({t}, 'e-0') > 0 THEN replace({t}, 'e-0', 'e-') ELSE {t} END"
    )


def _duck_timestamp(c: str, zoned: bool) -> tuple[str, str]:
    wall = f"CAST({c} AS TIMESTAMP)" if zoned else c
    # Infinities and what Python's datetime cannot hold (BC, after 9999) reach Python as
    # something else: such a page is written by Python.
    written = f"replace(strftime({wall}, '\"%Y-%m-%dT%H:%M:%S.%f+00:00\"'), '.000000+', '+')"
    beyond = (
        f"NOT ({wall} BETWEEN TIMESTAMP '0001-01-01' AND TIMESTAMP '9999-12-31 23:59:59.999999')"
    )
    return written, beyond


def _pg_timestamp(c: str, zoned: bool) -> str:
    wall = f"({c} AT TIME ZONE 'UTC')" if zoned else c
    return (
        f"CASE WHEN {wall} = 'infinity' THEN '{_MAX_UTC}' "
        f"WHEN {wall} = '-infinity' THEN '{_MIN_UTC}' ELSE '\"' || "
        f"replace(to_char({wall}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '') "
        "|| '+00:00\"' END"
    )


def _duck_date(c: str) -> tuple[str, str]:
    # Python gets datetime.max/min for infinities: such a page is written by Python.
    return _text(f"CAST({c} AS VARCHAR)"), f"isinf({c})"


def _pg_date(c: str) -> str:
    return _text(
        f"(CASE WHEN {c} = 'infinity' THEN '9999-12-31' WHEN {c} = '-infinity' "
        f"THEN '0001-01-01' ELSE to_char({c}, 'YYYY-MM-DD') END)"
    )


def _duck_time(c: str) -> str:
    t = f"CAST({c} AS VARCHAR)"
    return _text(f"(CASE WHEN contains({t}, '.') THEN rpad({t}, 15, '0') ELSE {t} END)")


def _pg_time(c: str) -> str:
    return _text(f"replace(to_char({c}, 'HH24:MI:SS.US'), '.000000', '')")


def _number(text: str, as_strings: bool) -> str:
    return _text(text) if as_strings else text


def _boolean(c: str) -> str:
    return f"CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END"


def _duck(
    kind: str, c: str, as_strings: bool, session: Mapping[str, str]
) -> tuple[str, str | None] | None:
    if kind in _DUCK_INTEGERS or _DUCK_DECIMAL.match(kind):
        return _number(f"CAST({c} AS VARCHAR)", as_strings), None
    if kind in ("DOUBLE", "FLOAT"):
        return _duck_double(c), None
    if kind in _DUCK_TEXT:
        return f"CAST(to_json({c}) AS VARCHAR)", None
    zoned = kind == "TIMESTAMP WITH TIME ZONE"
    if kind == "TIMESTAMP" or (zoned and session.get("TimeZone", "").lower() in UTC_ZONES):
        return _duck_timestamp(c, zoned)
    if kind == "DATE":
        return _duck_date(c)
    simple: dict[str, Render] = {
        "BOOLEAN": _boolean,
        "UUID": lambda c: _text(f"CAST({c} AS VARCHAR)"),
        "TIME": _duck_time,
    }
    render = simple.get(kind)
    return (render(c), None) if render else None


def _shortest_doubles(session: Mapping[str, str]) -> bool:
    """Whether Postgres writes doubles as their shortest exact text (``extra_float_digits``
    of 1 or more, the default since Postgres 12), not rounded to 15 digits."""
    digits = session.get("extra_float_digits", "")
    return digits.lstrip("-").isdigit() and int(digits) >= 1


def _pg(
    kind: str, c: str, as_strings: bool, session: Mapping[str, str]
) -> tuple[str, str | None] | None:
    if kind in _PG_INTEGERS:
        return _number(f"{c}::text", as_strings), None
    if kind == "numeric":  # NaN and infinities (Postgres 14) are null, as Python writes them
        t = f"{c}::text"
        finite = f"CASE WHEN {t} IN ('NaN', 'Infinity', '-Infinity') THEN 'null' ELSE "
        return f"{finite}{_number(t, as_strings)} END", None
    if kind in ("float4", "float8"):
        if not _shortest_doubles(session):
            return None
        big = f"abs({c}) >= 9007199254740992 AND abs({c}) < CAST('Infinity' AS DOUBLE PRECISION)"
        return _pg_double(c), big
    if kind in _PG_TEXT:
        return f"to_json({c})::text", None
    if kind in ("timestamp", "timestamptz"):
        return _pg_timestamp(c, kind == "timestamptz"), None
    simple: dict[str, Render] = {
        "bool": _boolean,
        "uuid": lambda c: _text(f"{c}::text"),
        "date": _pg_date,
        "time": _pg_time,
    }
    render = simple.get(kind)
    return (render(c), None) if render else None


def column_json(
    dialect: str, backend_type: str, name: str, *, as_strings: bool, session: Mapping[str, str]
) -> tuple[str, str | None] | None:
    """SQL writing column `name`'s values as JSON (NULL only for NULL), and an SQL condition
    true for a value it cannot write as Python would (or None); None when the type is
    not written here. With `as_strings` (``IEEE754Compatible=true``) Int64 and Decimal
    values are strings."""
    c = quoted(name)
    kind = backend_type.strip()
    as_strings = as_strings and edm_type(backend_type)[0] in (EDM_INT64, EDM_DECIMAL)
    if dialect == "duckdb":
        return _duck(kind, c, as_strings, session)
    if dialect == "postgres":
        return _pg(kind, c, as_strings, session)
    return None


def is_sized(dialect: str, backend_type: str) -> bool:
    """Whether the driver hands the column's values to Python as text (the byte budget
    of a page counts their length, `backends.base.rows_bytes`)."""
    kind = backend_type.strip()
    return kind in _DUCK_TEXT if dialect == "duckdb" else kind in _PG_TEXT
