"""OData pages written as JSON by the database are byte for byte the pages Python writes.

Each test reads the same feed twice from one live Tollway: once with the dataset's pages
written by the database (the default), once with them fetched and encoded in Python
(`Dataset.render_in_database` off), and compares every page's bytes, next links
included. The `kinds` table (`tests.odata_kinds`) holds every served type with the
values that are hard to write, on DuckDB and on the machine's Postgres.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.data.routes import datasets_key
from tests.conftest import make_config
from tests.odata_kinds import (
    DUCKDB_COLUMNS,
    POSTGRES_COLUMNS,
    SPECIAL,
    duckdb_kinds,
    kinds_dataset,
    pg_kinds,
)
from tests.odata_support import basic, relative
from tests.services import POSTGRES_DSN

IEEE754 = {"Accept": "application/json;odata.metadata=minimal;IEEE754Compatible=true"}
WRITTEN_BY_DATABASE = "string_agg("


def _config(backend: dict[str, Any], datasets: dict[str, Any], **odata: Any) -> Any:
    return make_config(
        {
            "cache": {"routes": []},  # every read reaches the database
            "odata": {"page_size": 7, **odata},
            "backends": {"wh": {**backend, "timeout_s": 10, "retries": 0}},
            "datasets": datasets,
        }
    )


@pytest.fixture(params=["duckdb", "postgres"])
async def kinds(request: Any, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[TestClient]:
    """A Tollway serving `kinds` from one backend, seven rows a page."""
    if request.param == "duckdb":
        duckdb_kinds(tmp_path / "kinds.duckdb")
        backend = {"type": "duckdb", "path": str(tmp_path / "kinds.duckdb")}
        datasets = {"kinds": kinds_dataset("wh", "kinds", DUCKDB_COLUMNS)}
        yield await aiohttp_client(create_app(_config(backend, datasets)))
    else:
        async with pg_kinds() as schema:
            backend = {"type": "postgres", "dsn": POSTGRES_DSN, "pool": {"min": 1, "max": 2}}
            datasets = {"kinds": kinds_dataset("wh", f"{schema}.kinds", POSTGRES_COLUMNS)}
            yield await aiohttp_client(create_app(_config(backend, datasets)))


async def _pages(client: TestClient, url: str, headers: dict[str, str]) -> list[bytes]:
    """Every page's body, following next links."""
    bodies = []
    next_url: str | None = url
    while next_url is not None and len(bodies) < 200:
        response = await client.get(next_url, headers={**basic(), **headers})
        body = await response.read()
        assert response.status == 200, body[:500]
        bodies.append(body)
        link = orjson.loads(body).get("@odata.nextLink")
        next_url = relative(client, link) if link else None
    return bodies


async def _both_ways(
    client: TestClient, url: str, headers: dict[str, str] | None = None, dataset: str = "kinds"
) -> tuple[list[bytes], list[bytes]]:
    """The feed's pages written by Python, then by the database."""
    described = client.app[datasets_key][dataset]
    described.render_in_database = False
    by_python = await _pages(client, url, headers or {})
    described.render_in_database = True
    by_database = await _pages(client, url, headers or {})
    return by_python, by_database


def _database_wrote(caplog: pytest.LogCaptureFixture) -> int:
    return sum(WRITTEN_BY_DATABASE in getattr(r, "sql", "") for r in caplog.records)


READS = [
    "/odata/kinds",
    "/odata/kinds?$orderby=txt desc,dbl",
    "/odata/kinds?$orderby=ts,day desc&$count=true",
    "/odata/kinds?$select=tstz,dec,money,flag,id&$orderby=dec desc",
    "/odata/kinds?$top=17&$skip=3",
    "/odata/kinds?$filter=" + quote("i16 ne 7 or txt eq 'plain'") + "&$orderby=id desc",
]


@pytest.mark.parametrize("headers", [{}, IEEE754], ids=["numbers", "ieee754"])
async def test_database_written_pages_equal_python_written_pages(
    kinds: TestClient, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tollway.data")
    for url in READS:
        by_python, by_database = await _both_ways(kinds, url, headers)
        assert len(by_python) > 1, url
        for number, (expected, got) in enumerate(zip(by_python, by_database, strict=True)):
            assert got == expected, f"{url}, page {number + 1}"
    assert _database_wrote(caplog) >= len(READS)


async def test_every_row_and_value_comes_once(kinds: TestClient) -> None:
    pages = await _pages(kinds, "/odata/kinds", {})
    rows = [row for body in pages for row in orjson.loads(body)["value"]]
    assert [r["id"] for r in rows] == [i for i in range(1, 91) if i % 13]
    assert {r["txt"] for r in rows} >= {'a "quoted" word', "back\\slash", "é € 😀 ünïcödé"}
    infinite = next(r for r in rows if r["id"] == SPECIAL["infinity"])
    assert infinite["ts"] == infinite["tstz"] == "9999-12-31T23:59:59.999999+00:00"


async def test_a_postgres_double_past_2_53_sends_its_page_to_python(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with pg_kinds() as schema:
        backend = {"type": "postgres", "dsn": POSTGRES_DSN, "pool": {"min": 1, "max": 2}}
        datasets = {"kinds": kinds_dataset("wh", f"{schema}.kinds", POSTGRES_COLUMNS)}
        client = await aiohttp_client(create_app(_config(backend, datasets)))
        caplog.set_level(logging.DEBUG, logger="tollway.data")
        url = "/odata/kinds?$select=id,dbl&$filter=id eq " + str(SPECIAL["big_double"])
        by_python, by_database = await _both_ways(client, url)
        assert by_database == by_python
        assert b"1.2345678901234568e+17" in by_database[0]
        attempts = [r.sql for r in caplog.records if WRITTEN_BY_DATABASE in getattr(r, "sql", "")]
        assert len(attempts) == 1  # tried, then written by Python


async def test_grouped_pages_with_metrics_are_the_same(aiohttp_client: Any, tmp_path: Path) -> None:
    duckdb_kinds(tmp_path / "kinds.duckdb")
    metrics = {"total": "sum(money)", "mean": "avg(dbl)", "n": "count(*)", "first": "min(ts)"}
    dataset = {**kinds_dataset("wh", "kinds", ["flag", "day"]), "metrics": metrics, "key": []}
    backend = {"type": "duckdb", "path": str(tmp_path / "kinds.duckdb")}
    client = await aiohttp_client(create_app(_config(backend, {"kinds": dataset}, page_size=2)))
    for url in [
        "/odata/kinds",
        "/odata/kinds?$select=flag,total,mean,n,first&$orderby=n desc",
        "/odata/kinds?$select=n,total,day&$orderby=total",  # metrics named first
    ]:
        by_python, by_database = await _both_ways(client, url)
        assert by_database == by_python and len(by_python) > 1


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
@pytest.mark.parametrize("budget", [1024, 1700])
async def test_pages_cut_by_max_response_bytes_are_the_same(
    aiohttp_client: Any, tmp_path: Path, backend: str, budget: int
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if backend == "duckdb":
            duckdb_kinds(tmp_path / "kinds.duckdb")
            where: dict[str, Any] = {"type": "duckdb", "path": str(tmp_path / "kinds.duckdb")}
            table, columns = "kinds", DUCKDB_COLUMNS
        else:
            schema = await stack.enter_async_context(pg_kinds())
            where = {"type": "postgres", "dsn": POSTGRES_DSN, "pool": {"min": 1, "max": 2}}
            table, columns = f"{schema}.kinds", POSTGRES_COLUMNS
        datasets = {"kinds": kinds_dataset("wh", table, columns)}
        backend_config = {**where, "max_response_bytes": budget}
        client = await aiohttp_client(create_app(_config(backend_config, datasets, page_size=20)))
        by_python, by_database = await _both_ways(client, "/odata/kinds?$select=id,txt")
        assert by_database == by_python
        sizes = [len(orjson.loads(body)["value"]) for body in by_database]
        assert min(sizes[:-1]) < 20 and sum(sizes) == 84  # cut by size, every row once
        if budget > 1024:  # some pages fit whole: those the database wrote
            assert max(sizes) == 20


async def test_a_column_sql_cannot_write_sends_the_page_to_python(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "odd.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "CREATE TABLE odd AS SELECT i AS id, 'acme' AS tenant_id, INTERVAL (i) DAY AS wait, "
            "[i, i + 1] AS pair, 'name ' || i AS name FROM range(1, 20) AS t(i)"
        )
    columns = ["id", "wait", "pair", "name"]
    datasets = {"kinds": kinds_dataset("wh", "odd", columns)}
    backend = {"type": "duckdb", "path": str(path)}
    client = await aiohttp_client(create_app(_config(backend, datasets)))
    caplog.set_level(logging.DEBUG, logger="tollway.data")
    by_python, by_database = await _both_ways(client, "/odata/kinds")
    assert by_database == by_python and _database_wrote(caplog) == 0
    by_python, by_database = await _both_ways(client, "/odata/kinds?$select=id,name")
    assert by_database == by_python and _database_wrote(caplog) == len(by_database)


async def test_pages_of_uneven_keys_are_found_whether_or_not_the_guess_holds(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "uneven.duckdb"
    ids = [*range(1, 60), *range(1000, 1100, 7), *range(50_000, 50_040), 9_000_000]
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE uneven (id BIGINT NOT NULL, tenant_id VARCHAR, v INT)")
        rows = [[i, i % 7] for i in ids]
        connection.executemany("INSERT INTO uneven VALUES (?, 'acme', ?)", rows)
    datasets = {"kinds": kinds_dataset("wh", "uneven", ["id", "v"])}
    backend = {"type": "duckdb", "path": str(path)}
    client = await aiohttp_client(create_app(_config(backend, datasets, page_size=10)))
    caplog.set_level(logging.DEBUG, logger="tollway.data")
    for url in ["/odata/kinds", "/odata/kinds?$orderby=id desc"]:
        by_python, by_database = await _both_ways(client, url)
        assert by_database == by_python
        rows = [row["id"] for body in by_database for row in orjson.loads(body)["value"]]
        assert sorted(rows) == ids and len(by_database) == 12
    probes = [r for r in caplog.records if "OFFSET" in getattr(r, "sql", "")]
    assert 0 < len(probes) < 4 * 12 / 2  # most pages found in one step


async def test_large_pages_keep_their_order_on_every_thread(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "large.duckdb"
    with duckdb.connect(str(path)) as connection:  # stored in an order no page is read in
        connection.execute(
            "CREATE TABLE large AS SELECT (i * 7919) % 30011 AS id, 'acme' AS tenant_id, "
            "(i * 31) % 1000 AS v, 'name ' || i AS name FROM range(30000) AS t(i)"
        )
    datasets = {"kinds": kinds_dataset("wh", "large", ["id", "v", "name"])}
    backend = {"type": "duckdb", "path": str(path), "threads": 4}
    client = await aiohttp_client(create_app(_config(backend, datasets, page_size=5000)))
    for url in ["/odata/kinds", "/odata/kinds?$orderby=v desc,name"]:
        by_python, by_database = await _both_ways(client, url)
        assert by_database == by_python and len(by_database) == 6


async def test_a_page_statement_the_database_refuses_is_written_by_python(
    kinds: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    await _pages(kinds, "/odata/kinds?$top=1", {})  # described
    described = kinds.app[datasets_key]["kinds"]
    by_python, _ = await _both_ways(kinds, "/odata/kinds?$select=id,i32")
    described.types["i32"] = described.types["ts"]  # the page's own SQL is now wrong
    caplog.set_level(logging.DEBUG, logger="tollway.data")
    by_database = await _pages(kinds, "/odata/kinds?$select=id,i32", {})
    assert by_database == by_python
    assert any(r.getMessage() == "page statement refused" for r in caplog.records)
