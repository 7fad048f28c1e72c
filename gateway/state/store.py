"""The state store: one small interface, SQLite and Postgres behind it.

All SQL is written once with ``?`` placeholders; the Postgres store numbers them. The
SQLite store runs on one dedicated thread (sqlite3 connections are not shared between
threads), in WAL mode so readers never wait on the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.state.schema import MIGRATIONS

if TYPE_CHECKING:
    import asyncpg

__all__ = ["StateStore", "StoreRejected", "StoreUnavailable", "StoredKey", "open_store"]

Row = Sequence[Any]
_KEY_COLUMNS = (
    "id, digest, previous_digest, previous_valid_until, tenant, scopes, models, datasets, "
    "limits, budget, name, expires_at, revoked_at, created_at, updated_at"
)


class StoreUnavailable(Exception):
    """The store did not answer; callers keep working from memory."""


class StoreRejected(Exception):
    """The store answered and refused the rows (bad data): writing them again will not help."""


@dataclass
class StoredKey:
    id: str
    digest: str
    tenant: str
    scopes: list[str]
    models: list[str] | None = None
    datasets: list[str] | None = None
    limits: list[str] | None = None
    budget: list[str] | None = None
    name: str | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    previous_digest: str | None = None
    previous_valid_until: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def row(self) -> tuple[Any, ...]:
        def js(value: list[str] | None) -> str | None:
            return None if value is None else orjson.dumps(value).decode()

        return (
            self.id, self.digest, self.previous_digest, self.previous_valid_until, self.tenant,
            orjson.dumps(self.scopes).decode(), js(self.models), js(self.datasets),
            js(self.limits), js(self.budget), self.name, self.expires_at, self.revoked_at,
            self.created_at, self.updated_at,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: Row) -> StoredKey:
        def lst(value: Any) -> list[str] | None:
            return None if value is None else list(orjson.loads(value))

        return cls(
            id=row[0], digest=row[1], previous_digest=row[2], previous_valid_until=row[3],
            tenant=row[4], scopes=lst(row[5]) or [], models=lst(row[6]), datasets=lst(row[7]),
            limits=lst(row[8]), budget=lst(row[9]), name=row[10], expires_at=row[11],
            revoked_at=row[12], created_at=row[13], updated_at=row[14],
        )  # fmt: skip


class StateStore(Protocol):
    kind: str

    async def migrate(self) -> None: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None: ...
    async def close(self) -> None: ...


class KeyQueries:
    """What the key table and the admin API ask of any store."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def version(self) -> int:
        rows = await self.store.fetch("SELECT value FROM tollway_meta WHERE name = 'keys_version'")
        return int(rows[0][0]) if rows else 0

    async def all(self) -> list[StoredKey]:
        rows = await self.store.fetch(f"SELECT {_KEY_COLUMNS} FROM tollway_keys")
        return [StoredKey.from_row(r) for r in rows]

    async def get(self, key_id: str) -> StoredKey | None:
        rows = await self.store.fetch(
            f"SELECT {_KEY_COLUMNS} FROM tollway_keys WHERE id = ?", (key_id,)
        )
        return StoredKey.from_row(rows[0]) if rows else None

    async def by_digest(self, digest: str) -> StoredKey | None:
        """The stored key whose secret (or whose previous secret, in rotation) has `digest`."""
        rows = await self.store.fetch(
            f"SELECT {_KEY_COLUMNS} FROM tollway_keys WHERE digest = ? OR previous_digest = ?",
            (digest, digest),
        )
        return StoredKey.from_row(rows[0]) if rows else None

    async def revoked_config_ids(self) -> set[str]:
        rows = await self.store.fetch("SELECT id FROM tollway_revoked_config_keys")
        return {r[0] for r in rows}

    async def save(self, key: StoredKey, *, new: bool) -> None:
        """Insert or replace `key` and bump the version, in one transaction."""
        placeholders = ", ".join("?" * 15)
        write = (
            (f"INSERT INTO tollway_keys ({_KEY_COLUMNS}) VALUES ({placeholders})", key.row())
            if new
            else (
                "UPDATE tollway_keys SET digest = ?, previous_digest = ?, "
                "previous_valid_until = ?, tenant = ?, scopes = ?, models = ?, datasets = ?, "
                "limits = ?, budget = ?, name = ?, expires_at = ?, revoked_at = ?, "
                "updated_at = ? WHERE id = ?",
                (*key.row()[1:13], key.row()[14], key.id),
            )
        )
        await self.store.transaction([write, _BUMP])

    async def revoke_config_key(self, key_id: str, at: float) -> float:
        """Revoke a config key as of `at`, unless it already is; when it was revoked."""
        await self.store.transaction(
            [
                (
                    "INSERT INTO tollway_revoked_config_keys (id, revoked_at) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (key_id, at),
                ),
                _BUMP,
            ]
        )
        rows = await self.store.fetch(
            "SELECT revoked_at FROM tollway_revoked_config_keys WHERE id = ?", (key_id,)
        )
        return float(rows[0][0]) if rows else at


_BUMP = ("UPDATE tollway_meta SET value = value + 1 WHERE name = 'keys_version'", ())


def _switch_to_wal(connection: sqlite3.Connection, wait_s: float = 5.0) -> None:
    """WAL mode, waiting for other processes opening the same new file at the same moment:
    changing the journal mode answers "database is locked" at once, without the busy
    timeout, while another connection does the same."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


class SQLiteStore:
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tollway-state")
        self._connection: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            _switch_to_wal(connection)
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=5000")
            self._connection = connection
        return self._connection

    async def _run(self, work: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, work, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {type(exc).__name__}: {exc}") from exc

    async def migrate(self) -> None:
        def work() -> None:
            connection = self._conn()
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS tollway_migrations (version INTEGER PRIMARY KEY, "
                    "applied_at DOUBLE PRECISION NOT NULL)"
                )
                done = {r[0] for r in connection.execute("SELECT version FROM tollway_migrations")}
                for version, statements in MIGRATIONS:
                    if version in done:
                        continue
                    for statement in statements:
                        connection.execute(statement)
                    connection.execute(
                        "INSERT INTO tollway_migrations (version, applied_at) VALUES (?, ?)",
                        (version, time.time()),
                    )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        await self._run(work)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._run(lambda: self._conn().execute(sql, tuple(params)))

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._run(lambda: self._conn().execute(sql, tuple(params)).fetchall()))

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        def work() -> None:
            connection = self._conn()
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(sql, [tuple(r) for r in rows])
                connection.execute("COMMIT")
            except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
                connection.execute("ROLLBACK")
                raise StoreRejected(f"sqlite: {type(exc).__name__}") from None
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        await self._run(work)

    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        def work() -> None:
            connection = self._conn()
            connection.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    connection.execute(sql, tuple(params))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        await self._run(work)

    async def close(self) -> None:
        def work() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await self._run(work)
        self._thread.shutdown(wait=True)


def _numbered(sql: str) -> str:
    """``?`` placeholders as Postgres's ``$1, $2, …`` (our own SQL only: no ``?`` in text)."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], start=1)) + parts[-1]


def _pg_errors() -> tuple[type[BaseException], ...]:
    """What a Postgres call raises when the store is away (asyncpg is imported only by a
    store on Postgres: a process on SQLite never loads it)."""
    import asyncpg

    return (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def _pg_rejected() -> tuple[type[BaseException], ...]:
    """The server answered and refused the data itself (a NUL in text, a number out of
    range, a constraint): retrying the same rows would block every record behind them."""
    import asyncpg

    return (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


class PostgresStore:
    kind = "postgres"

    def __init__(self, dsn: str, *, timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self.timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    import asyncpg

                    try:
                        self._pool = await asyncpg.create_pool(
                            self._dsn, min_size=1, max_size=5, timeout=self.timeout_s,
                            command_timeout=self.timeout_s,
                        )  # fmt: skip
                    except _pg_errors() as exc:
                        raise StoreUnavailable(f"postgres: {type(exc).__name__}") from None
        return self._pool

    async def migrate(self) -> None:
        pool = await self._get_pool()
        lock_id = zlib.crc32(b"tollway-migrations")
        try:
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_id)
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS tollway_migrations (version INTEGER PRIMARY KEY, "
                    "applied_at DOUBLE PRECISION NOT NULL)"
                )
                done = {
                    r[0] for r in await connection.fetch("SELECT version FROM tollway_migrations")
                }
                for version, statements in MIGRATIONS:
                    if version in done:
                        continue
                    for statement in statements:
                        await connection.execute(statement)
                    await connection.execute(
                        "INSERT INTO tollway_migrations (version, applied_at) VALUES ($1, $2)",
                        version,
                        time.time(),
                    )
        except _pg_errors() as exc:
            raise StoreUnavailable(f"postgres: {type(exc).__name__}") from None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        pool = await self._get_pool()
        try:
            await pool.execute(_numbered(sql), *params)
        except _pg_errors() as exc:
            raise StoreUnavailable(f"postgres: {type(exc).__name__}") from None

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        pool = await self._get_pool()
        try:
            return [tuple(r) for r in await pool.fetch(_numbered(sql), *params)]
        except _pg_errors() as exc:
            raise StoreUnavailable(f"postgres: {type(exc).__name__}") from None

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        pool = await self._get_pool()
        try:
            await pool.executemany(_numbered(sql), [tuple(r) for r in rows])
        except _pg_rejected() as exc:
            raise StoreRejected(f"postgres: {type(exc).__name__}") from None
        except _pg_errors() as exc:
            raise StoreUnavailable(f"postgres: {type(exc).__name__}") from None

    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        pool = await self._get_pool()
        try:
            async with pool.acquire() as connection, connection.transaction():
                for sql, params in statements:
                    await connection.execute(_numbered(sql), *params)
        except _pg_errors() as exc:
            raise StoreUnavailable(f"postgres: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except _pg_errors():  # TimeoutError is one of them
                self._pool.terminate()
            self._pool = None


def open_store(url: str) -> StateStore:
    """The store for a ``state:`` URL: ``sqlite:///path`` (or ``sqlite:///:memory:``) or
    ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///") or ":memory:")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError("state: expected sqlite:///PATH or postgresql://…")
