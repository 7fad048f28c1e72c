"""The data path against real DuckDB: raw SQL, refusals, timeouts and datasets.

The same requests against the machine's Postgres are in `test_data_postgres.py`."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config.keyhash import hash_key
from tests.conftest import OTHER_TENANT_KEY, USER_KEY, base_config_data, make_config

NARROW_KEY = "tw_narrow-data-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {USER_KEY}"}
Start = Callable[..., Awaitable[TestClient]]

ORDERS_DATASET = {
    "table": "orders",
    "tenant_column": "tenant_id",
    "dimensions": {"region": "region", "day": "CAST(ordered_at AS DATE)"},
    "metrics": {"revenue": "sum(amount)", "orders": "count(*)"},
}

# Each must be refused with 400 before reaching the database.
REFUSED = [
    "SELECT 1; DROP TABLE orders",
    "DROP TABLE orders",
    "DELETE FROM orders",
    "UPDATE orders SET amount = 0",
    "INSERT INTO orders (order_id) VALUES (99)",
    "CREATE TABLE x AS SELECT 1",
    "COPY orders TO '/tmp/tollway-stolen.csv'",
    "PRAGMA database_list",
    "SET statement_timeout = 0",
    "SELECT 1 INTO stolen",
    "SELECT * FROM orders FOR UPDATE",
    "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
    "SELECT 1 /* ; */ ; DELETE FROM orders",
    "SELECT ';' AS a; DELETE FROM orders --",
]
REFUSED_POSTGRES = [
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT * FROM dblink('host=evil', 'select 1') AS t(a int)",
    "SELECT pg_catalog.pg_read_binary_file('/etc/passwd')",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
]
REFUSED_DUCKDB = [
    "ATTACH '/tmp/other.duckdb'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "INSTALL httpfs",
    "LOAD httpfs",
]
INJECTIONS = [
    "north' OR '1'='1",
    "x'; DROP TABLE orders; --",
    "north\\' OR tenant_id = 'globex",
    "' UNION SELECT tenant_id, 1 FROM orders --",
]


def keys() -> list[dict[str, Any]]:
    return base_config_data()["keys"] + [
        {
            "id": "narrow",
            "hash": hash_key(NARROW_KEY),
            "tenant": "acme",
            "scopes": ["query"],
            "datasets": ["orders"],
        }
    ]


# --- DuckDB ---------------------------------------------------------------------------


def make_duckdb(path: Path) -> None:
    import duckdb

    from backends.demo_warehouse import DEMO_ORDERS_SQL

    with duckdb.connect(str(path)) as connection:
        connection.execute(DEMO_ORDERS_SQL)
        connection.execute(
            "CREATE TABLE kinds AS SELECT 1::INTEGER AS i, 2.50::DECIMAL(10,2) AS d, "
            "'2026-03-04'::DATE AS day, TIMESTAMPTZ '2026-03-04 05:06:07+00' AS at, "
            "'\\xAA'::BLOB AS b, 'NaN'::DOUBLE AS nan, NULL::VARCHAR AS nothing, true AS yes"
        )


@pytest.fixture
def duck(aiohttp_client: Any, tmp_path: Path) -> Start:
    path = tmp_path / "warehouse.duckdb"
    make_duckdb(path)

    async def start(**backend: Any) -> TestClient:
        config = make_config(
            {
                "backends": {
                    "wh": {"type": "duckdb", "path": str(path), "timeout_s": 1, **backend}
                },
                "datasets": {"orders": {"backend": "wh", **ORDERS_DATASET}},
                "keys": keys(),
            }
        )
        client: TestClient = await aiohttp_client(create_app(config))
        return client

    return start


async def query(
    client: TestClient, sql: str, *, backend: str = "wh", key: str = USER_KEY, **extra: Any
) -> tuple[int, Any]:
    response = await client.post(
        "/v1/query",
        json={"backend": backend, "sql": sql, **extra},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status, await response.json()


async def test_duckdb_types_round_trip_as_documented(duck: Start) -> None:
    client = await duck()
    status, body = await query(client, "SELECT * FROM kinds")
    assert status == 200, body
    assert [c["type"] for c in body["columns"]][:4] == [
        "INTEGER",
        "DECIMAL(10,2)",
        "DATE",
        "TIMESTAMP WITH TIME ZONE",
    ]
    assert body["rows"] == [
        [1, "2.50", "2026-03-04", "2026-03-04T05:06:07+00:00", "qg==", None, None, True]
    ]


async def test_duckdb_parameters_bind_and_truncation_is_reported(duck: Start) -> None:
    client = await duck(max_rows=50)
    status, body = await query(
        client,
        "SELECT order_id FROM orders WHERE region = $1 ORDER BY order_id",
        params=["north"],
        max_rows=3,
    )
    assert status == 200
    assert body["rows"] == [[4], [8], [12]] and body["truncated"] is True
    status, body = await query(client, "SELECT order_id FROM orders", max_rows=10_000)
    assert body["row_count"] == 50 and body["truncated"] is True  # the backend's cap wins
    status, body = await query(client, "SELECT 1 AS one", max_rows=5)
    assert body == {
        "columns": [{"name": "one", "type": "INTEGER"}],
        "rows": [[1]],
        "row_count": 1,
        "truncated": False,
    }


@pytest.mark.parametrize("sql", REFUSED + REFUSED_DUCKDB)
async def test_duckdb_refuses_what_is_not_a_plain_read(duck: Start, sql: str) -> None:
    client = await duck()
    status, body = await query(client, sql)
    assert status == 400, body
    assert body["error"]["param"] == "sql"
    status, body = await query(client, "SELECT count(*) FROM orders")
    assert body["rows"] == [[3000]]


async def test_duckdb_cannot_read_files_even_past_the_parser(duck: Start) -> None:
    # A path hidden where the checker does not look still meets DuckDB's own lock.
    client = await duck()
    status, body = await query(client, "SELECT * FROM read_blob(concat('/etc/', 'passwd'))")
    assert status == 400
    status, body = await query(client, "SELECT current_setting('enable_external_access') AS v")
    assert body["rows"] == [[False]]


async def test_duckdb_timeout_interrupts_the_query(duck: Start) -> None:
    client = await duck()
    started = time.monotonic()
    status, body = await query(client, "SELECT count(*) FROM range(10000000000) a, range(10) b")
    elapsed = time.monotonic() - started
    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    assert elapsed < 3
    status, body = await query(client, "SELECT 42 AS answer")
    assert status == 200 and body["rows"] == [[42]]


async def test_raw_sql_is_refused_to_dataset_keys_and_where_turned_off(duck: Start) -> None:
    client = await duck()
    status, body = await query(client, "SELECT 1", key=NARROW_KEY)
    assert status == 403 and body["error"]["code"] == "raw_sql_not_allowed"
    client = await duck(raw_sql=False)
    status, body = await query(client, "SELECT 1")
    assert status == 403


async def test_unknown_backend_and_bad_bodies(duck: Start) -> None:
    client = await duck()
    assert (await query(client, "SELECT 1", backend="nope"))[0] == 404
    assert (await query(client, "SELECT 1", params={"a": 1}))[0] == 400
    assert (await query(client, "SELECT 1", max_rows=0))[0] == 400
    assert (await query(client, ""))[0] == 400
    assert (await query(client, "SELEC 1"))[0] == 400


async def dataset(client: TestClient, body: dict[str, Any], key: str = USER_KEY) -> tuple[int, Any]:
    response = await client.post(
        "/v1/datasets/orders/query", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return response.status, await response.json()


async def tenant_truth(client: TestClient, tenant: str, region: str | None = None) -> int:
    where = f"tenant_id = '{tenant}'" + (f" AND region = '{region}'" if region else "")
    _, body = await query(client, f"SELECT count(*) FROM orders WHERE {where}")
    return int(body["rows"][0][0])


async def test_datasets_answer_only_the_callers_tenant(duck: Start) -> None:
    client = await duck()
    for key, tenant in ((USER_KEY, "acme"), (OTHER_TENANT_KEY, "globex")):
        status, body = await dataset(client, {"metrics": ["orders"]}, key)
        assert status == 200 and body["rows"] == [[await tenant_truth(client, tenant)]]
        status, body = await dataset(
            client,
            {
                "dimensions": ["region"],
                "metrics": ["orders"],
                "order_by": ["region"],
                "filters": [{"field": "region", "op": "in", "value": ["north", "south"]}],
            },
            key,
        )
        assert [r[0] for r in body["rows"]] == ["north", "south"]
        assert body["rows"][0][1] == await tenant_truth(client, tenant, "north")


@pytest.mark.parametrize("payload", INJECTIONS)
async def test_dataset_filter_values_are_only_values(duck: Start, payload: str) -> None:
    client = await duck()
    for op in ("eq", "ne", "contains", "starts_with", "in"):
        value: Any = [payload] if op == "in" else payload
        status, body = await dataset(
            client,
            {"metrics": ["orders"], "filters": [{"field": "region", "op": op, "value": value}]},
        )
        assert status == 200, body
        expected = await tenant_truth(client, "acme") if op == "ne" else 0
        assert body["rows"] == [[expected]], (op, payload)
    assert (await query(client, "SELECT count(*) FROM orders"))[1]["rows"] == [[3000]]


async def test_dataset_requests_that_are_wrong_say_what(duck: Start) -> None:
    client = await duck()
    cases = [
        ({"dimensions": ["tenant_id"]}, "tenant_id"),
        ({"metrics": ["secret"]}, "secret"),
        (
            {"metrics": ["orders"], "filters": [{"field": "region", "op": "like", "value": "x"}]},
            "like",
        ),
        ({"metrics": ["orders"], "filters": [{"field": "nope", "op": "eq", "value": 1}]}, "nope"),
        ({"metrics": ["orders"], "order_by": ["region"]}, "region"),
        ({"metrics": ["orders"], "limit": -1}, "limit"),
        (
            {"metrics": ["orders"], "filters": [{"field": "day", "op": "gte", "value": "soon"}]},
            "soon",
        ),
        ({}, "at least one"),
        ({"metrics": ["orders"], "sql": "SELECT 1"}, "sql"),
    ]
    for body, named in cases:
        status, answer = await dataset(client, body)
        assert status == 400, body
        assert named in answer["error"]["message"], (body, answer)


async def test_dataset_listing_types_and_permissions(duck: Start, aiohttp_client: Any) -> None:
    client = await duck()
    response = await client.get("/v1/datasets", headers=AUTH)
    listed = (await response.json())["data"]
    assert listed[0]["name"] == "orders"
    assert {"name": "day", "type": "DATE"} in listed[0]["dimensions"]
    assert all(f["name"] != "tenant_id" for f in listed[0]["dimensions"])
    status, body = await dataset(
        client,
        {
            "dimensions": ["day"],
            "metrics": ["revenue"],
            "order_by": ["-day"],
            "limit": 2,
            "filters": [{"field": "day", "op": "between", "value": ["2026-02-01", "2026-02-28"]}],
        },
    )
    assert status == 200 and body["rows"][0][0] == "2026-02-28" and body["truncated"] is True
    response = await client.post("/v1/datasets/missing/query", json={}, headers=AUTH)
    assert response.status == 404


def test_secrets_encrypt_cli_makes_a_token_the_config_accepts(tmp_path: Path) -> None:
    import sys

    from cryptography.fernet import Fernet

    from backends.secrets import fernet

    key = Fernet.generate_key().decode()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "secrets", "encrypt"],
        input="postgresql://u:p@h/db\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "TOLLWAY_SECRET_KEY": key, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert "postgresql" not in token
    assert fernet(key).decrypt(token.encode()).decode() == "postgresql://u:p@h/db"
