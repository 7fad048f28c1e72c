"""DuckDB in a worker process (``isolated: true``) behaves as DuckDB in-process, and the
gateway survives what happens to the worker: out of memory, a crash, a query that will
not stop. Real worker processes throughout."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from backends.base import CallContext
from backends.duckdb import create
from backends.duckdb_isolated import IsolatedDuckDBBackend
from backends.duckdb_process import OWNER_LOCK, remove_stale_spills
from gateway.app import create_app
from gateway.config import ConfigError
from gateway.config.defaults import embedded_config_data
from gateway.errors import BackendCrashed, BackendOutOfMemory, BackendTimeout
from gateway.resilience.adapters import create_backend
from tests.conftest import USER_KEY, make_config
from tests.odata_kinds import DUCKDB_COLUMNS, duckdb_kinds, kinds_dataset
from tests.odata_support import basic, relative

CTX = CallContext("test", "-")
LONG = "SELECT count(*) FROM range(10000000000) a, range(10) b"
TYPES = (
    "SELECT order_id, tenant_id, ordered_at, amount, CAST(ordered_at AS DATE) AS day, "
    "TIMESTAMPTZ '2026-03-04 05:06:07+02' AS at, INTERVAL 3 DAY AS span, "
    "'\\xAA'::BLOB AS b, 'NaN'::DOUBLE AS nan, NULL::VARCHAR AS nothing, [1, 2] AS list, "
    "{'a': 1} AS struct, MAP {'k': 2} AS map, 12345678901234567890::HUGEINT AS huge, "
    "'10:00:00+02'::TIMETZ AS tz, 'infinity'::TIMESTAMP AS never "
    "FROM orders WHERE order_id <= $1 ORDER BY order_id"
)


def _backend(**options: Any) -> Any:
    return create("wh", {"demo": True, **options}, timeout_s=5, connect_timeout_s=1)


@pytest.fixture
async def isolated() -> AsyncIterator[IsolatedDuckDBBackend]:
    backend = _backend(isolated=True, cancel_grace_s=1)
    await backend.start()
    yield backend
    await backend.close()


def _gone(pid: int) -> bool:
    """True once `pid` is neither running nor a zombie."""
    return not Path(f"/proc/{pid}").exists()


async def test_isolated_results_equal_in_process_results(
    isolated: IsolatedDuckDBBackend,
) -> None:
    local = _backend()
    await local.start()
    try:
        expected = await local.query(TYPES, [40], CTX, timeout_s=5)
    finally:
        await local.close()
    got = await isolated.query(TYPES, [40], CTX, timeout_s=5)
    assert got.columns == expected.columns
    assert repr(got.rows) == repr(expected.rows)  # NaN != NaN: compared as text
    assert len(got.rows) == 40


async def test_max_bytes_stops_the_fetch_in_the_worker(isolated: IsolatedDuckDBBackend) -> None:
    result = await isolated.query("SELECT * FROM orders", [], CTX, timeout_s=5, max_bytes=10_000)
    assert result.too_large and result.truncated and 0 < len(result.rows) < 3000


async def test_a_timeout_interrupts_the_query_and_the_worker_survives(
    isolated: IsolatedDuckDBBackend,
) -> None:
    pid = isolated.worker_pid
    with pytest.raises(BackendTimeout):
        await isolated.query(LONG, [], CTX, timeout_s=0.3)
    await asyncio.sleep(1.3)  # past cancel_grace_s: a query still running kills its worker
    assert isolated.worker_pid == pid
    assert (await isolated.query("SELECT 42", [], CTX, timeout_s=5)).rows == [(42,)]


async def test_a_caller_going_away_interrupts_its_query(isolated: IsolatedDuckDBBackend) -> None:
    pid = isolated.worker_pid
    task = asyncio.ensure_future(isolated.query(LONG, [], CTX, timeout_s=30))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.3)
    assert isolated.worker_pid == pid
    assert (await isolated.query("SELECT 1", [], CTX, timeout_s=5)).rows == [(1,)]


async def test_a_query_that_ignores_its_interrupt_gets_its_worker_restarted(
    isolated: IsolatedDuckDBBackend,
) -> None:
    events: list[tuple[str, str]] = []
    isolated.report_worker_events(lambda backend, event: events.append((backend, event)))
    pid = isolated.worker_pid
    assert pid is not None
    task = asyncio.ensure_future(isolated.query(LONG, [], CTX, timeout_s=0.5))
    await asyncio.sleep(0.2)
    os.kill(pid, signal.SIGSTOP)  # a worker that hears nothing
    with pytest.raises(BackendTimeout):
        await task
    await asyncio.sleep(1.5)
    assert _gone(pid)
    assert (await isolated.query("SELECT 1", [], CTX, timeout_s=5)).rows == [(1,)]
    assert isolated.worker_pid not in (None, pid)
    assert events == [("wh", "stuck"), ("wh", "started")]


async def test_a_killed_worker_answers_502_and_the_next_query_restarts_it(
    isolated: IsolatedDuckDBBackend,
) -> None:
    events: list[str] = []
    isolated.report_worker_events(lambda _backend, event: events.append(event))
    pid = isolated.worker_pid
    assert pid is not None
    task = asyncio.ensure_future(isolated.query(LONG, [], CTX, timeout_s=10))
    await asyncio.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(BackendCrashed) as caught:
        await task
    assert caught.value.status == 502
    assert (await isolated.query("SELECT 1", [], CTX, timeout_s=5)).rows == [(1,)]
    assert isolated.worker_pid not in (None, pid)
    assert _gone(pid)
    assert events == ["crashed", "started"]


async def test_duckdb_out_of_its_memory_limit_answers_backend_out_of_memory() -> None:
    backend = _backend(isolated=True, worker_memory_mb=256)  # memory_limit: 128MB
    await backend.start()
    try:
        with pytest.raises(BackendOutOfMemory):
            await backend.query(
                "SELECT len(list(i)) FROM range(100000000) t(i)", [], CTX, timeout_s=10
            )
        assert (await backend.query("SELECT 1", [], CTX, timeout_s=5)).rows == [(1,)]
    finally:
        await backend.close()


async def test_a_query_past_the_worker_cap_answers_502_and_the_next_query_works(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wh = {
        "type": "duckdb",
        "demo": True,
        "isolated": True,
        "worker_memory_mb": 200,
        "memory_limit": "4GB",  # DuckDB would let it grow: the cap stops it
        "timeout_s": 20,
        "retries": 0,
    }
    client = await aiohttp_client(create_app(make_config({"backends": {"wh": wh}})))
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    sql = "SELECT len(list(i)) FROM range(100000000) t(i)"
    response = await client.post("/v1/query", json={"backend": "wh", "sql": sql}, headers=headers)
    body = await response.json()
    assert response.status == 502, body
    assert body["error"]["code"] == "backend_out_of_memory"
    assert body["error"]["type"] == "upstream_error"
    assert "200 MB" in body["error"]["message"]
    assert set(body["error"]) >= {"message", "type", "code", "param", "request_id"}
    response = await client.post(
        "/v1/query", json={"backend": "wh", "sql": "SELECT 42 AS a"}, headers=headers
    )
    assert response.status == 200 and (await response.json())["rows"] == [[42]]
    killed = [r for r in caplog.records if r.getMessage() == "duckdb worker killed: out of memory"]
    assert len(killed) == 1 and killed[0].cap_mb == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'tollway_backend_worker_events_total{backend="wh",event="out_of_memory"} 1.0' in metrics
    assert 'tollway_backend_worker_events_total{backend="wh",event="started"} 2.0' in metrics


async def test_a_caller_error_answers_400(aiohttp_client: Any) -> None:
    wh = {"type": "duckdb", "demo": True, "isolated": True}
    client = await aiohttp_client(create_app(make_config({"backends": {"wh": wh}})))
    response = await client.post(
        "/v1/query",
        json={"backend": "wh", "sql": "SELECT nope FROM orders"},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    body = await response.json()
    assert response.status == 400
    assert body["error"]["code"] == "column_not_found"
    assert body["error"]["message"] == "column not found: nope"


async def test_close_leaves_no_child_process() -> None:
    backend = _backend(isolated=True)
    await backend.start()
    pid = backend.worker_pid
    assert pid is not None and not _gone(pid)
    await backend.close()
    assert _gone(pid)  # exited and reaped


def test_an_isolated_gateway_never_loads_duckdb() -> None:
    script = (
        "import asyncio, sys\n"
        "from backends.base import CallContext\n"
        "from backends.duckdb import create\n"
        "async def main():\n"
        "    b = create('wh', {'demo': True, 'isolated': True}, timeout_s=5,"
        " connect_timeout_s=1)\n"
        "    await b.start()\n"
        "    r = await b.query('SELECT 7', [], CallContext('t', '-'), timeout_s=5)\n"
        "    await b.close()\n"
        "    print(r.rows[0][0], 'duckdb' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == ["7", "False"]


@pytest.mark.parametrize(
    ("key", "wrong"),
    [
        ("isolated", "yes"),
        ("worker_memory_mb", 0),
        ("worker_memory_mb", 1.5),
        ("worker_memory_mb", True),
        ("cancel_grace_s", 0),
        ("cancel_grace_s", "5"),
        ("cancel_grace_s", False),
    ],
)
def test_isolation_options_are_checked(key: str, wrong: object) -> None:
    config = make_config({"backends": {"wh": {"type": "duckdb", key: wrong}}})
    with pytest.raises(ConfigError, match=rf"backends\.wh\.{key}"):
        create_backend(config.backends["wh"])


def test_an_isolated_memory_limit_defaults_to_half_the_worker_cap() -> None:
    backend = _backend(isolated=True, worker_memory_mb=300)
    assert backend.settings.memory_limit == "150MB"
    assert _backend(isolated=True, memory_limit="1GB").settings.memory_limit == "1GB"
    assert not isinstance(_backend(), IsolatedDuckDBBackend)


def test_the_embedded_demo_warehouse_runs_isolated_within_512_mb() -> None:
    demo = embedded_config_data({}).data["backends"]["demo"]
    assert demo["isolated"] is True and demo["worker_memory_mb"] == 512


async def _pages(client: TestClient, url: str) -> list[bytes]:
    bodies = []
    next_url: str | None = url
    while next_url is not None and len(bodies) < 50:
        response = await client.get(next_url, headers=basic())
        body = await response.read()
        assert response.status == 200, body[:300]
        bodies.append(body)
        link = orjson.loads(body).get("@odata.nextLink")
        next_url = relative(client, link) if link else None
    return bodies


async def test_odata_pages_through_a_worker_equal_pages_in_process(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    duckdb_kinds(tmp_path / "kinds.duckdb")
    read = "/odata/kinds?$orderby=ts,day desc&$count=true"
    pages = []
    for isolated in (False, True):
        backend = {
            "type": "duckdb",
            "path": str(tmp_path / "kinds.duckdb"),
            "isolated": isolated,
            "timeout_s": 10,
            "retries": 0,
        }
        config = make_config(
            {
                "cache": {"routes": []},
                "odata": {"page_size": 7},
                "backends": {"wh": backend},
                "datasets": {"kinds": kinds_dataset("wh", "kinds", DUCKDB_COLUMNS)},
            }
        )
        client = await aiohttp_client(create_app(config))
        pages.append(await _pages(client, read))
        await client.close()
    in_process, isolated_pages = pages
    assert len(in_process) > 1
    assert [_rows_of(p) for p in isolated_pages] == [_rows_of(p) for p in in_process]


def _rows_of(page: bytes) -> bytes:
    """A page's bytes from its rows on: the context and next link name the server (its
    port, its signing key) and differ between two apps."""
    start = page.index(b'"value":[')
    end = page.rindex(b',"@odata.nextLink"') if b'"@odata.nextLink"' in page else len(page)
    return page[start:end]


def test_only_the_spill_directories_of_dead_workers_are_removed(tmp_path: Path) -> None:
    def spill(name: str, *, lock: bool) -> Path:
        path = tmp_path / f"tollway-duckdb-{name}"
        path.mkdir()
        (path / "duckdb_temp_block.tmp").write_bytes(b"x" * 1024)
        if lock:
            (path / OWNER_LOCK).touch()
        return path

    dead, live = spill("dead", lock=True), spill("live", lock=True)
    starting, abandoned = spill("starting", lock=False), spill("abandoned", lock=False)
    os.utime(abandoned, (0, 0))  # created long ago, never claimed
    held = os.open(live / OWNER_LOCK, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running worker holds it
        removed = remove_stale_spills(str(tmp_path))
    finally:
        os.close(held)
    assert sorted(removed) == sorted([str(dead), str(abandoned)])
    assert live.exists() and starting.exists()
    assert not dead.exists() and not abandoned.exists()


def test_a_gateway_killed_outright_leaves_a_spill_directory_the_next_one_removes(
    tmp_path: Path,
) -> None:
    script = (
        "import asyncio, os, signal\n"
        "from backends.duckdb import create\n"
        "async def main():\n"
        "    b = create('wh', {'demo': True, 'isolated': True}, timeout_s=5, connect_timeout_s=1)\n"
        "    await b.start()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL
    left = list(tmp_path.glob("tollway-duckdb-*"))
    assert len(left) == 1 and (left[0] / OWNER_LOCK).exists()
    deadline = time.monotonic() + 10
    while not (removed := remove_stale_spills(str(tmp_path))):  # the worker dies with it
        assert time.monotonic() < deadline, "the worker outlived its gateway"
        time.sleep(0.05)
    assert removed == [str(left[0])] and not left[0].exists()
