"""The data path against hostile input and huge answers (issue 20): nothing recurses on
user input, answers are bounded by `max_response_bytes` while they are fetched, and the
databases' own error text never reaches a client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config.reader import ConfigError
from tests.conftest import USER_KEY, base_config_data, make_config, skip_or_fail
from tests.odata_support import basic, get_json, items_dataset, make_duckdb_items, pg_items
from tests.services import POSTGRES_DSN

AUTH = {"Authorization": f"Bearer {USER_KEY}"}


@pytest.fixture(params=["duckdb", "postgres"])
async def data(request: Any, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[TestClient]:
    """A Tollway whose backend `wh` holds `items`, answers bounded at 20,000 bytes."""
    limits = {"timeout_s": 5, "retries": 0, "max_response_bytes": 20_000}
    if request.param == "duckdb":
        make_duckdb_items(tmp_path / "items.duckdb")
        backend = {"type": "duckdb", "path": str(tmp_path / "items.duckdb"), **limits}
        yield await _client(aiohttp_client, backend, "items")
    else:
        async with pg_items() as schema:
            backend = {"type": "postgres", "dsn": POSTGRES_DSN, **limits}
            yield await _client(aiohttp_client, backend, f"{schema}.items")


async def _client(aiohttp_client: Any, backend: dict[str, Any], table: str) -> TestClient:
    config = make_config(
        {
            "odata": {"page_size": 100},
            "backends": {"wh": backend},
            "datasets": {"items": items_dataset("wh", table)},
        }
    )
    client: TestClient = await aiohttp_client(create_app(config))
    client.table = table  # type: ignore[attr-defined]
    return client


async def query(client: TestClient, sql: str) -> tuple[int, Any]:
    sql = sql.replace("items", client.table)  # type: ignore[attr-defined]
    response = await client.post("/v1/query", json={"backend": "wh", "sql": sql}, headers=AUTH)
    return response.status, await response.json()


async def refused_with(client: TestClient, sql: str, status: int, code: str) -> str:
    got, body = await query(client, sql)
    assert got == status, body
    error = body["error"]
    assert error["code"] == code and error["request_id"] and error["type"]
    message: str = error["message"]
    return message


async def test_deeply_nested_sql_is_400_and_long_sql_is_served(data: TestClient) -> None:
    deep = "SELECT " + "(" * 5000 + "1" + ")" * 5000
    message = await refused_with(data, deep, 400, "sql_too_deep")
    assert "32 levels" in message
    await refused_with(data, "SELECT " + "NOT " * 1300 + "true", 400, "sql_too_deep")
    await refused_with(data, "SELECT " + "- " * 1300 + "1", 400, "sql_too_deep")
    nested = "SELECT " + "abs(" * 31 + "-1" + ")" * 31 + " AS one"
    status, body = await query(data, nested)
    assert status == 200 and body["rows"] == [[1]], body
    chain = " OR ".join(f"id = {i}" for i in range(1, 1501))
    status, body = await query(data, f"SELECT count(*) AS n FROM items WHERE {chain}")
    assert status == 200 and body["rows"] == [[240]], body
    listed = ", ".join(str(i) for i in range(1, 5001))
    status, body = await query(data, f"SELECT count(*) AS n FROM items WHERE id IN ({listed})")
    assert status == 200 and body["rows"] == [[240]], body


async def test_dataset_filters_long_and_many_are_served(data: TestClient) -> None:
    many = [{"field": "qty", "op": "gte", "value": -4}] * 1000
    wide = [{"field": "id", "op": "in", "value": list(range(1, 1001))}]
    for filters in (many, wide):
        body = {"metrics": [], "dimensions": ["id"], "filters": filters, "limit": 1000}
        response = await data.post("/v1/datasets/items/query", json=body, headers=AUTH)
        assert response.status == 200, await response.text()
        assert (await response.json())["row_count"] == 180  # acme's rows
    too_many = {"dimensions": ["id"], "filters": many * 2}
    response = await data.post("/v1/datasets/items/query", json=too_many, headers=AUTH)
    assert response.status == 400


@pytest.mark.parametrize(
    ("sql", "code", "shown"),
    [
        ("SELECT nope FROM items", "column_not_found", "column not found: nope"),
        ("SELECT * FROM no_such_table", "table_not_found", "table not found"),
        ("SELECT qty % 0 FROM items", "division_by_zero", "division by zero"),
        ("SELECT CAST('abc' AS INTEGER)", "invalid_value", "a value is not valid for its type"),
        ("SELECT no_such_function(1)", "function_not_found", "no function matches"),
    ],
)
async def test_database_errors_are_a_code_and_a_short_message(
    data: TestClient, sql: str, code: str, shown: str
) -> None:
    message = await refused_with(data, sql, 400, code)
    assert message.startswith(shown)
    for internal in ("Error:", "LINE", "HINT", "Candidate", "^", "\n", "pg_", "duckdb"):
        assert internal not in message, message


async def test_answers_are_cut_at_max_response_bytes_never_silently(data: TestClient) -> None:
    status, body = await query(data, "SELECT id, repeat('x', 500) AS pad FROM items ORDER BY id")
    assert status == 200 and body["truncated"] is True
    assert 0 < body["row_count"] < 40 and [r[0] for r in body["rows"]] == list(
        range(1, body["row_count"] + 1)
    )
    message = await refused_with(data, "SELECT repeat('x', 100000000)", 502, "response_too_large")
    assert "max_response_bytes" in message
    await refused_with(data, "SELECT lpad('x', 50000 + 50000)", 502, "response_too_large")
    built = "SELECT repeat('x', CAST(n AS INTEGER)) FROM (SELECT 30000 AS n) AS t"
    await refused_with(data, built, 502, "response_too_large")  # only known once fetched


async def test_odata_pages_cut_by_size_continue_on_the_next(data: TestClient) -> None:
    first = await get_json(data, "/odata/items?$select=id,name")
    assert "@odata.nextLink" in first
    rows = first["value"]
    url = first["@odata.nextLink"].split(str(data.make_url("")).rstrip("/"), 1)[1]
    while url:
        page = await get_json(data, url)
        rows += page["value"]
        link = page.get("@odata.nextLink")
        url = link.split(str(data.make_url("")).rstrip("/"), 1)[1] if link else ""
    assert [r["id"] for r in rows] == sorted({r["id"] for r in rows}) and len(rows) == 180
    response = await data.get("/odata/items?$select=id,name", headers=basic())
    assert response.status == 200


def test_max_response_bytes_and_sql_depth_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"backends\.wh\.max_response_bytes"):
        make_config({"backends": {"wh": {"type": "duckdb", "max_response_bytes": 10}}})
    with pytest.raises(ConfigError, match=r"backends\.wh\.max_sql_depth"):
        make_config({"backends": {"wh": {"type": "duckdb", "max_sql_depth": 500}}})


def _require_postgres() -> None:
    import asyncio

    import asyncpg

    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_DSN, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        skip_or_fail(f"Postgres at {POSTGRES_DSN} is not reachable ({type(exc).__name__})")


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    ("backend", "sql"),
    [
        ({"type": "duckdb", "demo": True}, "SELECT repeat('x', 100000000) AS big"),
        # Built from data, so only the server can tell: it fails there, before sending.
        (
            {"type": "postgres", "dsn": POSTGRES_DSN},
            "SELECT repeat('x', n) AS big FROM (VALUES (100000000)) AS t(n)",
        ),
    ],
    ids=["duckdb", "postgres"],
)
def test_a_hundred_megabyte_value_is_refused_without_the_process_growing(
    tmp_path: Path, backend: dict[str, Any], sql: str
) -> None:
    if backend["type"] == "postgres":
        _require_postgres()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data = base_config_data()
    data["server"]["port"] = port
    data["state"] = f"sqlite:///{tmp_path / 'state.db'}"
    data["backends"] = {"wh": backend}
    config = tmp_path / "tollway.yaml"
    config.write_text(yaml.safe_dump(data))
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/health/live", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "never came up"
                time.sleep(0.1)
        body = orjson.dumps({"backend": "wh", "sql": sql})
        request = urllib.request.Request(
            f"{base}/v1/query", data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 502
        assert orjson.loads(refused.value.read())["error"]["code"] == "response_too_large"
        assert _vm_hwm_kb(server.pid) < 200 * 1024
    finally:
        server.terminate()
        server.wait(timeout=20)


async def test_a_client_that_goes_away_stops_its_postgres_statement(aiohttp_client: Any) -> None:
    import asyncio

    import aiohttp
    import asyncpg

    backend = {"type": "postgres", "dsn": POSTGRES_DSN, "timeout_s": 30, "retries": 0}
    client = await aiohttp_client(create_app(make_config({"backends": {"wh": backend}})))
    marker = "SELECT pg_sleep(20) AS gone_with_the_client"
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            "/v1/query",
            json={"backend": "wh", "sql": marker},
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.5),
        )
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        for _ in range(40):
            running = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE '%gone_with_the_client%' AND pid <> pg_backend_pid()"
            )
            if running == 0:
                break
            await asyncio.sleep(0.1)
        assert running == 0, "the statement kept running after its client left"
    finally:
        await admin.close()


async def test_a_client_that_goes_away_interrupts_duckdb(aiohttp_client: Any) -> None:
    import asyncio

    import aiohttp

    backend = {"type": "duckdb", "demo": True, "threads": 1, "timeout_s": 30, "retries": 0}
    client = await aiohttp_client(create_app(make_config({"backends": {"wh": backend}})))
    slow = (
        "SELECT count(*) AS n FROM range(100000000) AS a, range(1000) AS b WHERE a.range > b.range"
    )
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            "/v1/query",
            json={"backend": "wh", "sql": slow},
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.5),
        )
    started = time.monotonic()
    status, body = await query_on(client, "SELECT 42 AS answer")
    assert status == 200 and body["rows"] == [[42]]
    assert time.monotonic() - started < 3, "the one DuckDB thread was still busy"


async def query_on(client: TestClient, sql: str) -> tuple[int, Any]:
    response = await client.post("/v1/query", json={"backend": "wh", "sql": sql}, headers=AUTH)
    return response.status, await response.json()


def test_a_column_mixing_text_with_dates_is_measured_without_failing() -> None:
    import datetime as dt

    from backends.base import rows_bytes

    rows = [("-0044-03-15",), (dt.date(2024, 1, 2),), (None,)]  # a BC date comes as text
    assert rows_bytes(rows) == 3 * 24 + len("-0044-03-15")
