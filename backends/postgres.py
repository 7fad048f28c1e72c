"""Postgres through an asyncpg pool: every query in a read-only transaction with its own
``statement_timeout``, parameters bound by the driver.

The pool is made at start when the server answers, or at the first query otherwise, so
a database that is down at start or restarted later costs 503s while it is away, never a
Tollway restart: asyncpg drops connections that broke and opens new ones.

Options: ``dsn`` (a libpq URL; ``${ENV}`` in the config, or a Fernet token decrypted
with ``TOLLWAY_SECRET_KEY`` given as ``dsn_encrypted``), ``pool`` (``{min, max}``).
Neither the DSN nor its password ever appears in a log line or an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from backends.base import (
    Backend,
    BackendKind,
    CallContext,
    Column,
    Health,
    OptionError,
    QueryResult,
    reject_unknown_options,
    rows_bytes,
    sql_health,
)
from backends.secrets import decrypt_option
from backends.sql_errors import caller_error
from gateway.errors import BackendTimeout, BackendUnavailable, ResponseTooLarge

__all__ = ["PostgresBackend", "create"]

_log = logging.getLogger("tollway.backends.postgres")
_OWN_OPTIONS = frozenset({"dsn", "dsn_encrypted", "pool"})
# What the database says about the caller's SQL or values: a 400 with a short message and
# a code (`backends.sql_errors`), not a backend failure; the first match wins.
_CALLER_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (asyncpg.PostgresSyntaxError, "sql_syntax_error"),
    (asyncpg.UndefinedTableError, "table_not_found"),
    (asyncpg.UndefinedColumnError, "column_not_found"),
    (asyncpg.UndefinedFunctionError, "function_not_found"),
    (asyncpg.exceptions.DivisionByZeroError, "division_by_zero"),
    (asyncpg.DataError, "invalid_value"),
    (asyncpg.InsufficientPrivilegeError, "permission_denied"),
    (asyncpg.ReadOnlySQLTransactionError, "read_only"),
    (asyncpg.exceptions.AmbiguousColumnError, "ambiguous_column"),
    (asyncpg.exceptions.GroupingError, "grouping_error"),
    (asyncpg.exceptions.DatatypeMismatchError, "type_mismatch"),
    (asyncpg.exceptions.InvalidParameterValueError, "invalid_value"),
    (asyncpg.exceptions.FeatureNotSupportedError, "not_supported"),
)
_TOO_LARGE = "tollway:response_too_large"
"""What `gateway.data.sql_safety.bound_row_size` makes the server fail with."""
_FIRST_BATCH = 2048
_LAST_BATCH = 131072
_UNAVAILABLE = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def create(
    name: str,
    options: Mapping[str, Any],
    *,
    timeout_s: float,
    connect_timeout_s: float,
    max_response_bytes: int = 64 * 1024 * 1024,
) -> Backend:
    reject_unknown_options(options, _OWN_OPTIONS, "postgres")
    if ("dsn" in options) == ("dsn_encrypted" in options):
        raise OptionError("dsn", "give exactly one of dsn or dsn_encrypted")
    if "dsn" in options:
        dsn = options["dsn"]
        if not isinstance(dsn, str) or not dsn.startswith(("postgres://", "postgresql://")):
            raise OptionError("dsn", "expected a postgresql:// URL")
    else:
        dsn = decrypt_option(options, "dsn_encrypted")
    pool = options.get("pool", {})
    if not isinstance(pool, Mapping) or set(pool) - {"min", "max"}:
        raise OptionError("pool", "expected {min, max}")
    low, high = pool.get("min", 1), pool.get("max", 10)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise OptionError("pool", "min and max must be whole numbers")
    if not 0 <= low <= high or high < 1:
        raise OptionError("pool", "expected 0 <= min <= max and max >= 1")
    return PostgresBackend(
        name, dsn, min_size=low, max_size=high, connect_timeout_s=connect_timeout_s
    )


class PostgresBackend:
    kind: BackendKind = "sql"
    dialect = "postgres"

    def __init__(
        self, name: str, dsn: str, *, min_size: int, max_size: int, connect_timeout_s: float
    ) -> None:
        self.name = name
        self._dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the DSN
        return f"PostgresBackend({self.name!r})"

    async def start(self) -> None:
        try:
            await self._ensure_pool()
        except BackendUnavailable:
            _log.warning(
                "database unreachable at start; will retry on use", extra={"backend": self.name}
            )

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=self.min_size,
                        max_size=self.max_size,
                        timeout=self.connect_timeout_s,
                        max_inactive_connection_lifetime=300,
                        server_settings={
                            "application_name": "tollway",
                            "default_transaction_read_only": "on",
                        },
                    )
                except (*_UNAVAILABLE, asyncpg.PostgresError, TimeoutError) as exc:
                    raise self._unavailable(exc) from None
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except (TimeoutError, *_UNAVAILABLE):
                self._pool.terminate()
            self._pool = None

    async def health(self) -> Health:
        return await sql_health(self)

    async def query(
        self,
        sql: str,
        params: Sequence[Any],
        ctx: CallContext,
        *,
        timeout_s: float,
        max_bytes: int | None = None,
    ) -> QueryResult:
        pool = await self._ensure_pool()
        try:
            async with pool.acquire(timeout=self.connect_timeout_s) as connection:
                async with connection.transaction(readonly=True):
                    # The server stops the query itself, a little before our own deadline,
                    # so the connection comes back clean instead of being cancelled.
                    millis = max(1, int(timeout_s * 1000) - 50)
                    await connection.execute(f"SET LOCAL statement_timeout = {millis}")
                    statement = await connection.prepare(sql)
                    attributes = statement.get_attributes()
                    columns = [Column(a.name, a.type.name) for a in attributes]
                    if max_bytes is None:
                        records = await statement.fetch(*params)
                        return QueryResult(columns, [tuple(record) for record in records])
                    return await _fetch_within(statement, params, columns, max_bytes)
        except asyncpg.QueryCanceledError:
            raise BackendTimeout(
                f"the query ran longer than {timeout_s:g}s and was stopped", backend=self.name
            ) from None
        except (*_UNAVAILABLE, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        except asyncpg.PostgresError as exc:
            if _TOO_LARGE in str(getattr(exc, "message", "")):
                raise ResponseTooLarge(
                    f"a row of the answer would be larger than {max_bytes} bytes "
                    f"(max_response_bytes of backend {self.name!r}); nothing was sent",
                    backend=self.name,
                ) from None
            code = next((c for kind, c in _CALLER_ERRORS if isinstance(exc, kind)), "query_error")
            raise caller_error(code, str(getattr(exc, "message", "")), sql) from None

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        # The exception's text may hold the host or user of the DSN: only its kind is told.
        return BackendUnavailable(
            f"database of backend {self.name!r} is unavailable ({type(exc).__name__})",
            backend=self.name,
            retry_after=1,
        )


async def _fetch_within(
    statement: Any, params: Sequence[Any], columns: list[Column], max_bytes: int
) -> QueryResult:
    """The rows a batch at a time through a cursor, stopping once they would pass
    `max_bytes` (the rows that fitted are kept, in order)."""
    cursor = await statement.cursor(*params)
    rows: list[tuple[Any, ...]] = []
    used = 0
    batch = _FIRST_BATCH
    while True:
        chunk = [tuple(record) for record in await cursor.fetch(batch)]
        size = rows_bytes(chunk)
        if used + size > max_bytes:
            for row in chunk:
                used += rows_bytes([row])
                if used > max_bytes:
                    break
                rows.append(row)
            return QueryResult(columns, rows, truncated=True, too_large=True)
        used += size
        rows += chunk
        if len(chunk) < batch:
            return QueryResult(columns, rows)
        batch = min(batch * 4, _LAST_BATCH)
