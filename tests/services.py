"""Fixtures for the real services tests talk to: the machine's Postgres and Redis, a
Postgres cluster of a test's own, and fake LLM providers served on 127.0.0.1.

`tests/conftest.py` imports them, so every test module has them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.fake_providers import FakeProvider

__all__ = ["IN_CI", "POSTGRES_DSN", "REDIS_URL", "OwnRedis", "free_port", "skip_or_fail"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

POSTGRES_DSN = os.environ.get(
    "TOLLWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TOLLWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def skip_or_fail(reason: str) -> None:
    """Skip with a one-line reason; under CI a missing dependency is a failure instead."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeProvider:
    """Fake OpenAI/Groq/Tavily upstreams; `fake.url` is their root."""
    provider = FakeProvider()
    server = await aiohttp_server(provider.app())
    provider.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return provider


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the machine's Redis, its keys removed after."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        await client.aclose()
        skip_or_fail(f"Redis at {REDIS_URL} is not reachable ({type(exc).__name__})")
    prefix = f"tollway-test:{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def pg_databases() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Makes new databases on the machine's Postgres (their URLs); all dropped after."""
    try:
        admin = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        skip_or_fail(f"Postgres at {POSTGRES_DSN} is not reachable ({type(exc).__name__})")
        raise
    names: list[str] = []

    async def make() -> str:
        name = f"tw_test_{uuid.uuid4().hex[:12]}"
        await admin.execute(f"CREATE DATABASE {name}")
        names.append(name)
        return POSTGRES_DSN.rsplit("/", 1)[0] + f"/{name}"

    try:
        yield make
    finally:
        for name in names:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def pg_database(pg_databases: Callable[[], Awaitable[str]]) -> str:
    """One new database on the machine's Postgres, dropped after the test."""
    return await pg_databases()


@pytest.fixture
def throwaway_cluster() -> Iterator[Any]:
    """A Postgres cluster of the test's own, on a free port, that it may stop and start."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found or shutil.which("runuser") is None:
        skip_or_fail("initdb/pg_ctl (Debian postgresql) and runuser are needed")
    bin_dir = found[-1].parent
    # Under /tmp itself: pytest's own tmp dirs are closed to the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="tollway-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "pgdata"
    port = free_port()

    def as_postgres(*args: str, check: bool = True) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        subprocess.run(command, check=check, capture_output=True, timeout=60)

    as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    pg_ctl = str(bin_dir / "pg_ctl")

    class Cluster:
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

        def start(self) -> None:
            options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
            log = str(data / "log")
            as_postgres(pg_ctl, "-D", str(data), "-w", "-l", log, "-o", options, "start")

        def stop(self) -> None:
            as_postgres(pg_ctl, "-D", str(data), "-w", "-m", "fast", "stop")

    cluster = Cluster()
    cluster.start()
    try:
        yield cluster
    finally:
        as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


class OwnRedis:
    """A redis-server of the test's own, which it may kill and start again."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="tollway-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.folder, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


@pytest.fixture
def own_redis() -> Any:
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server (Debian redis-server) is needed to test Redis failing")
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(server.folder, ignore_errors=True)
