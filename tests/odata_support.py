"""The `items` table the OData tests read, the same rows in a DuckDB file and in the
machine's Postgres (a schema of the test's own), and helpers to read feeds page by page.

The rows are made here in Python, so each test can compute its answer over them
independently of any database: nulls in every nullable column, text with quotes, ``%``,
``_``, spaces and capitals, halves to round, negative numbers, naive (UTC) timestamps with
fractional seconds and ``timestamptz`` instants.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
from aiohttp.test_utils import TestClient

from tests.conftest import USER_KEY, skip_or_fail
from tests.services import POSTGRES_DSN

__all__ = [
    "COLUMNS", "ITEMS", "acme_rows", "all_pages", "basic", "get_json", "items_dataset",
    "make_duckdb_items", "pg_items", "relative",
]  # fmt: skip

NAMES = ["north", "MiXeD", "O'Brien", "50% off", "a_b", "  padded  ", "Ärger", "orbit",
         "under_score", "rare", None]  # fmt: skip
COLUMNS = ["id", "tenant_id", "name", "amount", "score", "qty", "day", "seen_at", "paid_at", "flag"]


def _row(i: int) -> dict[str, Any]:
    base = dt.datetime(2026, 1, 1) + dt.timedelta(minutes=i * 397, seconds=i % 7)
    return {
        "id": i,
        "tenant_id": "globex" if i % 4 == 0 else "acme",
        "name": NAMES[i % len(NAMES)],
        "amount": None if i % 9 == 0 else decimal.Decimal(i * 37 % 6000) / 100,
        "score": None if i % 10 == 3 else (i % 13 - 6) / 2,
        "qty": i % 9 - 4,
        "day": None if i % 8 == 5 else dt.date(2025, 1, 1) + dt.timedelta(days=i * 3 % 365),
        "seen_at": base + dt.timedelta(microseconds=(i % 4) * 250_000),
        "paid_at": (base + dt.timedelta(hours=5)).replace(tzinfo=dt.UTC),
        "flag": None if i % 5 == 0 else i % 2 == 0,
    }


ITEMS = [_row(i) for i in range(1, 241)]


def acme_rows() -> list[dict[str, Any]]:
    return [r for r in ITEMS if r["tenant_id"] == "acme"]


def items_dataset(backend: str, table: str) -> dict[str, Any]:
    return {
        "backend": backend,
        "table": table,
        "tenant_column": "tenant_id",
        "key": ["id"],
        "dimensions": {c: c for c in COLUMNS if c != "tenant_id"},
        "metrics": {},
    }


_DDL = (
    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT, "
    "amount DECIMAL(12, 2), score DOUBLE PRECISION, qty INTEGER NOT NULL, day DATE, "
    "seen_at TIMESTAMP NOT NULL, paid_at TIMESTAMPTZ NOT NULL, flag BOOLEAN)"
)


def make_duckdb_items(path: Path) -> None:
    connection = duckdb.connect(str(path))
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(_DDL.format(table="items").replace("DOUBLE PRECISION", "DOUBLE"))
    connection.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [[r[c] for c in COLUMNS] for r in ITEMS],
    )
    connection.close()


@contextlib.asynccontextmanager
async def pg_items(rows: list[dict[str, Any]] | None = None) -> AsyncIterator[str]:
    """A schema of the caller's own on the machine's Postgres holding `items`; dropped
    after. Its name is what it yields."""
    try:
        admin = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        skip_or_fail(f"Postgres at {POSTGRES_DSN} is not reachable ({type(exc).__name__})")
        raise
    schema = f"tw_odata_{uuid.uuid4().hex[:10]}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.execute(_DDL.format(table=f"{schema}.items"))
        await admin.copy_records_to_table(
            "items",
            schema_name=schema,
            records=[tuple(r[c] for c in COLUMNS) for r in (ITEMS if rows is None else rows)],
        )
        yield schema
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def basic(key: str = USER_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"powerbi:{key}".encode()).decode()}


def relative(client: TestClient, link: str) -> str:
    return link.split(str(client.make_url("")).rstrip("/"), 1)[1]


async def get_json(
    client: TestClient, url: str, key: str = USER_KEY, headers: dict[str, str] | None = None
) -> Any:
    response = await client.get(url, headers={**basic(key), **(headers or {})})
    assert response.status == 200, await response.text()
    assert response.headers.getall("OData-Version") == ["4.0"]
    return await response.json()


async def all_pages(client: TestClient, url: str, key: str = USER_KEY) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(10_000):
        page = await get_json(client, url, key)
        rows += page["value"]
        if "@odata.nextLink" not in page:
            return rows
        url = relative(client, page["@odata.nextLink"])
    raise AssertionError("paging never ended")
