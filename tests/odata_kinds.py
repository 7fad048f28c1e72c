"""A `kinds` table holding every column type the OData feeds serve, with the values that
are hard to write as JSON: nulls, unicode, quotes, backslashes, every control character,
large and tiny decimals, doubles of every magnitude and notation, NaN and infinities,
timestamps before 1970 with fractions, far years, infinite dates and timestamps, offsets.

The same rows go into a DuckDB file and a Postgres schema of the test's own; each
backend gets the types it has (DuckDB's unsigned integers, Postgres's unconstrained
numeric). A few values are set with SQL after the insert (infinities), as drivers do
not send them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import duckdb

from tests.conftest import skip_or_fail
from tests.services import POSTGRES_DSN

__all__ = ["DUCKDB_COLUMNS", "POSTGRES_COLUMNS", "duckdb_kinds", "kinds_dataset", "pg_kinds"]

D = decimal.Decimal
UTC = dt.UTC

TEXTS: list[Any] = [
    None, "", "plain", 'a "quoted" word', "back\\slash", "\\u000B written out", "\\\\u001F",
    "".join(chr(c) for c in range(1, 32)) + "\x7f", "\x0b\x0e\x0f\x1a\x1b\x1c\x1d\x1e\x1f",
    "é € 😀 ünïcödé", "\u2028\u2029\ufeff", "tab\tnew\nline\r", '{"json": [1, 2]}',
    "</script>&<>'", "x" * 300,
]  # fmt: skip
DECIMALS: list[Any] = [
    None, D("0"), D("-0.5"), D("123456789012345678901234567.1234567890"), D("0.0000000001"),
    D("-99999999999999999999999999.9999999999"), D("1"), D("42.4200000000"),
]  # fmt: skip
MONEY: list[Any] = [None, D("0.00"), D("-0.05"), D("5.00"), D("9999999999.99"), D("-1.10")]
DOUBLES: list[Any] = [
    None, 0.0, -0.0, 1.0, 0.1, -123.456, 2 / 3, 1e-5, 1.234e-5, -6.4e-5, 9.99999e-6, 1.5e-7,
    -2.5e-9, 1e-4, 1e15, 1234567890123456.5, 8.5e15, 1e16, 1e22, 5e-324, 1.7976931348623157e308,
    -1e-300, 12345678.9, math.nan, math.inf, -math.inf, 100.0, 1e-10,
]  # fmt: skip
BIG_DOUBLE = 1.2345678901234568e17
"""Postgres writes some doubles of 2^53 and more with extra digits: such a page goes to
Python."""
FLOATS: list[Any] = [None, 0.1, 1.5, 16777217.0, 3.4e38, 1e-7, -2.5, 1e16]
INTS16: list[Any] = [None, 0, -1, 32767, -32768, 7]
INTS32: list[Any] = [None, 0, 2147483647, -2147483648, 12]
INTS64: list[Any] = [None, 0, 9223372036854775807, -9223372036854775808, 2**53 + 1, -5]
FLAGS: list[Any] = [None, True, False]
DAYS: list[Any] = [
    None, dt.date(2026, 1, 9), dt.date(5, 1, 1), dt.date(1969, 12, 31), dt.date(9999, 12, 31),
    dt.date(1, 1, 1),
]  # fmt: skip
STAMPS: list[Any] = [
    None, dt.datetime(1970, 1, 1), dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
    dt.datetime(1900, 1, 1, 0, 0, 0, 500000), dt.datetime(5, 1, 1, 12, 0, 0, 1),
    dt.datetime(2026, 1, 9, 10, 30, 0, 123456), dt.datetime(9999, 12, 31, 23, 59, 59),
    dt.datetime(1, 1, 1),
]  # fmt: skip
INSTANTS: list[Any] = [
    None, dt.datetime(2026, 1, 9, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    dt.datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
    dt.datetime(2026, 6, 1, tzinfo=UTC),
]  # fmt: skip
TIMES: list[Any] = [
    None, dt.time(0, 0), dt.time(10, 30, 0, 500000), dt.time(23, 59, 59, 999999),
    dt.time(0, 0, 0, 1), dt.time(12, 0, 1),
]  # fmt: skip
UUIDS: list[Any] = [None, uuid.UUID("8a7c1e1e-1111-2222-3333-abcdefabcdef"), uuid.UUID(int=0)]

_SAMPLES: dict[str, list[Any]] = {
    "txt": TEXTS, "dec": DECIMALS, "money": MONEY, "dbl": DOUBLES, "flt": FLOATS,
    "i16": INTS16, "i32": INTS32, "i64": INTS64, "flag": FLAGS, "day": DAYS, "ts": STAMPS,
    "tstz": INSTANTS, "tod": TIMES, "uid": UUIDS,
}  # fmt: skip
ROWS = 90
SPECIAL = {"big_double": 61, "infinity": 62, "minus_infinity": 63}
"""Rows whose values are set apart: a double Postgres cannot write shortest, and
infinite dates and timestamps (set with SQL after the insert)."""

_TYPES = {
    "duckdb": {
        "id": "BIGINT PRIMARY KEY", "tenant_id": "VARCHAR NOT NULL", "txt": "VARCHAR",
        "dec": "DECIMAL(38, 10)", "money": "DECIMAL(12, 2)", "dbl": "DOUBLE", "flt": "FLOAT",
        "i16": "SMALLINT", "i32": "INTEGER", "i64": "BIGINT", "u64": "UBIGINT",
        "flag": "BOOLEAN", "day": "DATE", "ts": "TIMESTAMP", "tstz": "TIMESTAMPTZ",
        "tod": "TIME", "uid": "UUID", "odd2": "DOUBLE NOT NULL", "yes": "BOOLEAN NOT NULL",
    },
    "postgres": {
        "id": "BIGINT PRIMARY KEY", "tenant_id": "TEXT NOT NULL", "txt": "TEXT",
        "dec": "NUMERIC(38, 10)", "money": "NUMERIC(12, 2)", "dbl": "DOUBLE PRECISION",
        "flt": "REAL", "i16": "SMALLINT", "i32": "INTEGER", "i64": "BIGINT",
        "num": "NUMERIC", "odd": "NUMERIC NOT NULL", "odd2": "DOUBLE PRECISION NOT NULL",
        "vc": "VARCHAR(400)", "flag": "BOOLEAN", "day": "DATE",
        "ts": "TIMESTAMP", "tstz": "TIMESTAMPTZ", "tod": "TIME", "uid": "UUID",
    },
}  # fmt: skip
DUCKDB_COLUMNS = [c for c in _TYPES["duckdb"] if c != "tenant_id"]
POSTGRES_COLUMNS = [c for c in _TYPES["postgres"] if c != "tenant_id"]


def _value(column: str, i: int) -> Any:
    if column == "u64":
        return [None, 0, 18446744073709551615, 9223372036854775808][i % 4]
    if column == "num":
        return [None, D("NaN"), D("1.00E+30"), D("1E-7"), D("-0.000"), D("123.4500")][i % 6]
    if column == "odd":  # never null, yet written as null
        return [D("NaN"), D("1.50"), D("Infinity"), D("-Infinity"), D("0")][i % 5]
    if column == "odd2":
        return [math.nan, 1.5, math.inf, -math.inf, 0.0, 1e-5][i % 6]
    if column == "yes":
        return i % 3 == 0
    if column == "vc":
        return TEXTS[(i * 7) % len(TEXTS)]
    samples = _SAMPLES[column]
    # A stride prime to every list's length: each value comes, each page mixes them.
    return samples[(i * 11 + len(column)) % len(samples)]


def _rows(backend: str) -> list[dict[str, Any]]:
    rows = []
    for i in range(1, ROWS + 1):
        row = {c: _value(c, i) for c in _TYPES[backend] if c not in ("id", "tenant_id")}
        row["id"] = i
        row["tenant_id"] = "globex" if i % 13 == 0 else "acme"
        if backend == "postgres" and row["txt"] is not None:  # Postgres text holds no NUL
            row["txt"] = row["txt"].replace("\x00", "")
        row["dbl"] = BIG_DOUBLE if i == SPECIAL["big_double"] else row["dbl"]
        rows.append(row)
    return rows


def _ddl(backend: str, table: str) -> str:
    columns = ", ".join(f"{name} {kind}" for name, kind in _TYPES[backend].items())
    return f"CREATE TABLE {table} ({columns})"


def _infinities(table: str) -> list[str]:
    return [
        f"UPDATE {table} SET day = 'infinity', ts = 'infinity', tstz = 'infinity' "
        f"WHERE id = {SPECIAL['infinity']}",
        f"UPDATE {table} SET day = '-infinity', ts = '-infinity', tstz = '-infinity' "
        f"WHERE id = {SPECIAL['minus_infinity']}",
    ]


def duckdb_kinds(path: Path) -> None:
    connection = duckdb.connect(str(path))
    connection.execute(_ddl("duckdb", "kinds"))
    columns = list(_TYPES["duckdb"])
    marks = ", ".join("?" for _ in columns)
    connection.executemany(
        f"INSERT INTO kinds ({', '.join(columns)}) VALUES ({marks})",
        [[row[c] for c in columns] for row in _rows("duckdb")],
    )
    for statement in _infinities("kinds"):
        connection.execute(statement)
    connection.close()


@contextlib.asynccontextmanager
async def pg_kinds() -> AsyncIterator[str]:
    """A schema of the caller's own holding `kinds`, dropped after; yields its name."""
    try:
        admin = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        skip_or_fail(f"Postgres at {POSTGRES_DSN} is not reachable ({type(exc).__name__})")
        raise
    schema = f"tw_kinds_{uuid.uuid4().hex[:10]}"
    columns = list(_TYPES["postgres"])
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.execute(_ddl("postgres", f"{schema}.kinds"))
        await admin.copy_records_to_table(
            "kinds",
            schema_name=schema,
            columns=columns,
            records=[tuple(row[c] for c in columns) for row in _rows("postgres")],
        )
        for statement in _infinities(f"{schema}.kinds"):
            await admin.execute(statement)
        yield schema
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def kinds_dataset(backend: str, table: str, columns: list[str]) -> dict[str, Any]:
    return {
        "backend": backend,
        "table": table,
        "tenant_column": "tenant_id",
        "key": ["id"],
        "dimensions": {c: c for c in columns},
        "metrics": {},
    }
