"""The data path against the machine's real Postgres (a schema per test), and against a
Postgres cluster of the test's own that it stops and starts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import check_config, create_app
from tests.conftest import OTHER_TENANT_KEY, USER_KEY, make_config, skip_or_fail
from tests.services import POSTGRES_DSN
from tests.test_data import (
    INJECTIONS,
    ORDERS_DATASET,
    REFUSED,
    REFUSED_POSTGRES,
    Start,
    dataset,
    keys,
    query,
)

# --- Postgres -------------------------------------------------------------------------


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    try:
        admin = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        skip_or_fail(f"Postgres at {POSTGRES_DSN} is not reachable ({type(exc).__name__})")
        raise
    schema = f"tw_{uuid.uuid4().hex[:12]}"
    await admin.execute(f"CREATE SCHEMA {schema}")
    await admin.execute(
        f"""CREATE TABLE {schema}.orders (
            order_id bigint PRIMARY KEY, tenant_id text NOT NULL, region text NOT NULL,
            ordered_at timestamptz NOT NULL, amount numeric(12,2) NOT NULL, note text,
            tags text[], payload jsonb, blob bytea, took interval)"""
    )
    await admin.execute(
        f"""INSERT INTO {schema}.orders
            SELECT i, CASE WHEN i % 3 = 0 THEN 'globex' ELSE 'acme' END,
                   (ARRAY['north','south','east','west'])[1 + i % 4],
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' + make_interval(hours => (i * 97) % 4000),
                   5 + ((i * 37) % 50000) / 100.0, CASE WHEN i = 1 THEN 'first' END,
                   ARRAY['a', 'b'], '{{"k": 1}}'::jsonb, '\\xdead'::bytea, interval '90 minutes'
            FROM generate_series(1, 600) AS i"""
    )
    try:
        yield schema
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture
def pg(aiohttp_client: Any, pg_schema: str) -> Start:
    async def start(dsn: str = POSTGRES_DSN, **backend: Any) -> TestClient:
        config = make_config(
            {
                "backends": {
                    "wh": {
                        "type": "postgres",
                        "dsn": dsn,
                        "timeout_s": 1,
                        "retries": 0,
                        "pool": {"min": 1, "max": 4},
                        **backend,
                    }
                },
                "datasets": {
                    "orders": {"backend": "wh", **ORDERS_DATASET, "table": f"{pg_schema}.orders"}
                },
                "keys": keys(),
            }
        )
        client: TestClient = await aiohttp_client(create_app(config))
        return client

    return start


async def test_postgres_types_and_parameters(pg: Start, pg_schema: str) -> None:
    client = await pg()
    status, body = await query(
        client,
        f"SELECT order_id, amount, ordered_at, note, tags, payload, blob, took "
        f"FROM {pg_schema}.orders WHERE order_id = $1 AND region = $2",
        params=[1, "south"],
    )
    assert status == 200, body
    assert [c["type"] for c in body["columns"]] == [
        "int8",
        "numeric",
        "timestamptz",
        "text",
        "text[]",
        "jsonb",
        "bytea",
        "interval",
    ]
    row = body["rows"][0]
    assert row[:4] == [1, "5.37", "2026-01-05T01:00:00+00:00", "first"]
    assert row[4] == ["a", "b"] and row[6] == "3q0=" and row[7] == "P0DT5400S"


@pytest.mark.parametrize("sql", REFUSED + REFUSED_POSTGRES)
async def test_postgres_refuses_what_is_not_a_plain_read(
    pg: Start, pg_schema: str, sql: str
) -> None:
    client = await pg()
    status, body = await query(client, sql.replace("orders", f"{pg_schema}.orders"))
    assert status == 400, body
    status, body = await query(client, f"SELECT count(*) FROM {pg_schema}.orders")
    assert body["rows"] == [[600]]


async def test_postgres_runs_queries_read_only_beneath_the_parser(
    pg: Start, pg_schema: str
) -> None:
    # Even SQL the checker allowed cannot write: the transaction itself is read-only.
    client = await pg()
    status, body = await query(client, "SELECT current_setting('transaction_read_only') AS ro")
    assert body["rows"] == [["on"]]


async def test_postgres_statement_timeout_then_the_pool_serves_on(pg: Start) -> None:
    client = await pg()
    started = time.monotonic()
    status, body = await query(client, "SELECT pg_sleep(5)")
    elapsed = time.monotonic() - started
    assert status == 504, body
    assert elapsed < 2.5
    status, body = await query(client, "SELECT 7 AS n")
    assert status == 200 and body["rows"] == [[7]]


async def test_postgres_errors_never_show_the_dsn(pg: Start) -> None:
    client = await pg(dsn="postgresql://tollway_user:s3cret-pass@127.0.0.1:1/none")
    status, body = await query(client, "SELECT 1")
    assert status == 503
    assert "s3cret" not in str(body) and "tollway_user" not in str(body)


async def test_postgres_dataset_is_tenant_scoped(pg: Start, pg_schema: str) -> None:
    client = await pg()
    for key, tenant in ((USER_KEY, "acme"), (OTHER_TENANT_KEY, "globex")):
        status, body = await dataset(client, {"metrics": ["orders"]}, key)
        _, truth = await query(
            client, f"SELECT count(*) FROM {pg_schema}.orders WHERE tenant_id = $1", params=[tenant]
        )
        assert status == 200 and body["rows"] == truth["rows"]
    for payload in INJECTIONS:
        status, body = await dataset(
            client,
            {"metrics": ["orders"], "filters": [{"field": "region", "op": "eq", "value": payload}]},
        )
        assert status == 200 and body["rows"] == [[0]]
    status, body = await dataset(
        client,
        {
            "dimensions": ["day"],
            "metrics": ["revenue"],
            "order_by": ["day"],
            "limit": 1,
            "filters": [{"field": "day", "op": "gte", "value": "2026-03-01"}],
        },
    )
    assert status == 200 and body["rows"][0][0] >= "2026-03-01"


async def test_postgres_restarted_mid_run_is_503_then_served_again(
    aiohttp_client: Any, throwaway_cluster: Any
) -> None:
    config = make_config(
        {
            "backends": {
                "wh": {
                    "type": "postgres",
                    "dsn": throwaway_cluster.dsn,
                    "timeout_s": 2,
                    "retries": 0,
                    "connect_timeout_s": 1,
                }
            }
        }
    )
    client = await aiohttp_client(create_app(config))
    assert (await query(client, "SELECT 1 AS up"))[0] == 200
    await asyncio.to_thread(throwaway_cluster.stop)
    status, body = await query(client, "SELECT 1 AS down")
    assert status == 503, body
    await asyncio.to_thread(throwaway_cluster.start)
    for _ in range(20):  # a dead pooled connection may cost one more 503
        status, body = await query(client, "SELECT 2 AS up")
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200 and body["rows"] == [[2]]


async def test_postgres_dsn_can_be_fernet_encrypted(
    aiohttp_client: Any, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.fernet import Fernet

    from backends.secrets import encrypt
    from gateway.config.reader import ConfigError

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = encrypt(POSTGRES_DSN, old)
    monkeypatch.setenv("TOLLWAY_SECRET_KEY", f"{new},{old}")  # rotated: the old key still decrypts
    backend = {"type": "postgres", "dsn_encrypted": token, "timeout_s": 2}
    client = await aiohttp_client(create_app(make_config({"backends": {"wh": backend}})))
    status, body = await query(client, f"SELECT count(*) FROM {pg_schema}.orders")
    assert status == 200 and body["rows"] == [[600]]
    monkeypatch.setenv("TOLLWAY_SECRET_KEY", new)
    with pytest.raises(ConfigError, match=r"backends\.wh\.dsn_encrypted: cannot be decrypted"):
        check_config(make_config({"backends": {"wh": backend}}))


async def test_postgres_connection_killed_by_the_server_is_replaced(pg: Start) -> None:
    client = await pg(pool={"min": 1, "max": 1})
    status, body = await query(client, "SELECT pg_backend_pid() AS pid")
    assert status == 200, body
    pid = body["rows"][0][0]
    admin = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid) is True
    finally:
        await admin.close()
    status, body = await query(client, "SELECT pg_backend_pid() AS after_kill")
    assert status == 200, body
    assert body["rows"][0][0] != pid
