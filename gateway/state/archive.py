"""One archive format for both state stores: backup, verify, restore.

An archive is gzip-compressed JSON lines:

1. the manifest: ``{"format": "tollway-state", "format_version": 1, "schema_version",
   "tollway_version", "created_at", "source", "tables": {name: {"columns", "rows",
   "sha256"}}}``;
2. for each table in manifest order, one JSON array per row (columns in manifest order).

``sha256`` is over the table's row lines exactly as written (each with its newline).
With ``--encrypt`` the gzip stream is cut into 1 MiB pieces, each a Fernet token under
``TOLLWAY_SECRET_KEY`` written as a 4-byte big-endian length and the token, after the
magic line ``TOLLWAY-ENCRYPTED-1``. Rows are streamed through a temporary file, so memory
stays flat however large the usage table is. Key hashes go in as they are; no raw key is
ever in the store, so none is in an archive.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import sqlite3
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import asyncpg
import orjson

from gateway import __version__
from gateway.state.schema import MIGRATIONS

__all__ = ["ArchiveError", "TABLES", "backup", "read_manifest", "restore", "verify"]

TABLES: Final = (
    "tollway_meta", "tollway_keys", "tollway_revoked_config_keys", "tollway_usage",
    "tollway_audit", "tollway_response_owners",
)  # fmt: skip
SCHEMA_VERSION: Final = max(version for version, _ in MIGRATIONS)
_MAGIC: Final = b"TOLLWAY-ENCRYPTED-1\n"
_PIECE: Final = 1024 * 1024
_BATCH: Final = 2000


class ArchiveError(Exception):
    """The archive or the store cannot be used; the message is the one line to show."""


# --- reading the store, in one consistent snapshot --------------------------------------


def _snapshot_sqlite(path: str, spool: IO[bytes]) -> tuple[dict[str, Any], int]:
    if not os.path.exists(path):
        raise ArchiveError(f"no SQLite state file at {path}")
    connection = sqlite3.connect(path)
    try:
        connection.execute("BEGIN")  # one read transaction: a consistent snapshot under WAL
        version = connection.execute("SELECT max(version) FROM tollway_migrations").fetchone()[0]
        tables: dict[str, Any] = {}
        for table in TABLES:
            cursor = connection.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cursor.description]
            tables[table] = _spool_rows(spool, columns, _fetched(cursor))
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ArchiveError(f"cannot read the SQLite store: {exc}") from None
    finally:
        connection.close()
    return tables, int(version or 0)


async def _snapshot_postgres(dsn: str, spool: IO[bytes]) -> tuple[dict[str, Any], int]:
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ArchiveError(f"cannot reach the Postgres store ({type(exc).__name__})") from None
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            version = await connection.fetchval("SELECT max(version) FROM tollway_migrations")
            tables: dict[str, Any] = {}
            for table in TABLES:
                statement = await connection.prepare(f"SELECT * FROM {table}")
                columns = [a.name for a in statement.get_attributes()]
                digest, count = hashlib.sha256(), 0
                async for record in statement.cursor(prefetch=_BATCH):
                    line = orjson.dumps(list(record)) + b"\n"
                    spool.write(line)
                    digest.update(line)
                    count += 1
                tables[table] = {"columns": columns, "rows": count, "sha256": digest.hexdigest()}
    except asyncpg.PostgresError as exc:
        raise ArchiveError(f"cannot read the Postgres store: {exc}") from None
    finally:
        await connection.close()
    return tables, int(version or 0)


def _fetched(cursor: sqlite3.Cursor) -> Iterator[list[Any]]:
    while batch := cursor.fetchmany(_BATCH):
        yield batch


def _spool_rows(
    spool: IO[bytes], columns: list[str], batches: Iterator[list[Any]]
) -> dict[str, Any]:
    digest, count = hashlib.sha256(), 0
    for batch in batches:
        for row in batch:
            line = orjson.dumps(list(row)) + b"\n"
            spool.write(line)
            digest.update(line)
            count += 1
    return {"columns": columns, "rows": count, "sha256": digest.hexdigest()}


async def backup(url: str, target: Path, *, encrypt_with: str | None = None) -> dict[str, Any]:
    """Write the store at `url` to `target`; returns the manifest."""
    with tempfile.TemporaryFile() as spool:
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            tables, version = await asyncio.to_thread(_snapshot_sqlite, path, spool)
            source = "sqlite"
        elif url.startswith(("postgresql://", "postgres://")):
            tables, version = await _snapshot_postgres(url, spool)
            source = "postgres"
        else:
            raise ArchiveError("state: expected sqlite:///PATH or postgresql://…")
        manifest = {
            "format": "tollway-state", "format_version": 1, "schema_version": version,
            "tollway_version": __version__, "created_at": time.time(), "source": source,
            "tables": tables,
        }  # fmt: skip
        spool.seek(0)
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as raw:
            sink: Any = _EncryptingWriter(raw, encrypt_with) if encrypt_with else raw
            with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as zipped:
                zipped.write(orjson.dumps(manifest) + b"\n")
                while chunk := spool.read(_PIECE):
                    zipped.write(chunk)
            if encrypt_with:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        partial.rename(target)  # never a half-written archive under the real name
    return manifest


class _EncryptingWriter(io.RawIOBase):
    def __init__(self, raw: IO[bytes], keys: str) -> None:
        from backends.secrets import fernet

        self._raw = raw
        self._fernet = fernet(keys)
        self._buffer = bytearray()
        raw.write(_MAGIC)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer += bytes(data)
        while len(self._buffer) >= _PIECE:
            self._emit(bytes(self._buffer[:_PIECE]))
            del self._buffer[:_PIECE]
        return len(data)

    def _emit(self, piece: bytes) -> None:
        token = self._fernet.encrypt(piece)
        self._raw.write(struct.pack(">I", len(token)) + token)

    def close(self) -> None:
        if self._buffer:
            self._emit(bytes(self._buffer))
            self._buffer.clear()
        super().close()


def _decrypted(raw: IO[bytes], keys: str | None) -> IO[bytes]:
    """The gzip stream of an archive file, decrypting it piece by piece when needed."""
    head = raw.read(len(_MAGIC))
    if head != _MAGIC:
        raw.seek(0)
        return raw
    if not keys:
        raise ArchiveError("the archive is encrypted; set TOLLWAY_SECRET_KEY")
    from cryptography.fernet import InvalidToken

    from backends.secrets import fernet

    try:
        box = fernet(keys)
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None
    spool = tempfile.TemporaryFile()
    while size_bytes := raw.read(4):
        if len(size_bytes) != 4:
            raise ArchiveError("the archive is truncated")
        (size,) = struct.unpack(">I", size_bytes)
        token = raw.read(size)
        if len(token) != size:
            raise ArchiveError("the archive is truncated")
        try:
            spool.write(box.decrypt(token))
        except InvalidToken:
            raise ArchiveError(
                "the archive does not decrypt with TOLLWAY_SECRET_KEY (wrong key, or altered)"
            ) from None
    spool.seek(0)
    return spool


def _lines(path: Path, keys: str | None) -> Iterator[bytes]:
    if not path.exists():
        raise ArchiveError(f"no archive at {path}")
    with path.open("rb") as raw:
        stream = _decrypted(raw, keys)
        try:
            with gzip.GzipFile(fileobj=stream, mode="rb") as zipped:
                yield from zipped
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise ArchiveError(
                f"the archive is damaged or truncated ({type(exc).__name__})"
            ) from None


def read_manifest(path: Path, keys: str | None) -> dict[str, Any]:
    for line in _lines(path, keys):
        return _manifest(line)
    raise ArchiveError("the archive is empty")


def _manifest(line: bytes) -> dict[str, Any]:
    try:
        manifest = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ArchiveError("the archive has no manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "tollway-state":
        raise ArchiveError("not a Tollway state archive")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ArchiveError(
            f"the archive's schema version {manifest['schema_version']} is newer than this "
            f"Tollway's ({SCHEMA_VERSION}); upgrade Tollway first"
        )
    return manifest


def _table_rows(path: Path, keys: str | None) -> Iterator[tuple[str, list[Any]]]:
    """Every row of the archive with its table, checked against the manifest on the way."""
    lines = _lines(path, keys)
    manifest = _manifest(next(lines, b""))
    for table, info in manifest["tables"].items():
        digest, count = hashlib.sha256(), 0
        for _ in range(info["rows"]):
            line = next(lines, None)
            if line is None:
                raise ArchiveError(
                    f"table {table}: the archive ends after {count} of {info['rows']} rows"
                )
            digest.update(line)
            count += 1
            try:
                yield table, orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ArchiveError(f"table {table}: row {count} is not JSON") from None
        if digest.hexdigest() != info["sha256"]:
            raise ArchiveError(f"table {table}: checksum mismatch (the archive was altered)")
    if next(lines, None) is not None:
        raise ArchiveError("the archive has data after its last table")


def verify(path: Path, keys: str | None) -> dict[str, Any]:
    """Check everything without touching any store; the manifest if it is sound."""
    manifest = read_manifest(path, keys)
    for _ in _table_rows(path, keys):
        pass
    return manifest


async def restore(url: str, path: Path, keys: str | None, *, force: bool) -> dict[str, Any]:
    """Verify, then replace the store's contents with the archive's in one transaction."""
    manifest = verify(path, keys)
    from gateway.state.store import StoreUnavailable, open_store

    store = open_store(url)
    try:
        await store.migrate()
        counts = {
            t: (await store.fetch(f"SELECT count(*) FROM {t}"))[0][0]
            for t in ("tollway_keys", "tollway_usage", "tollway_audit")
        }
    except StoreUnavailable as exc:
        raise ArchiveError(f"cannot reach the target store ({exc})") from None
    finally:
        await store.close()
    if any(counts.values()) and not force:
        held = ", ".join(f"{n} {t.removeprefix('tollway_')}" for t, n in counts.items() if n)
        raise ArchiveError(f"the target store already holds {held}; --force replaces them")
    if url.startswith("sqlite:///"):
        _restore_sqlite(url.removeprefix("sqlite:///"), manifest, path, keys)
    else:
        await _restore_postgres(url, manifest, path, keys)
    return manifest


def _insert_sql(table: str, columns: list[str], placeholder: str) -> str:
    marks = ", ".join(placeholder.format(i + 1) for i in range(len(columns)))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def _batches(archive: Path, keys: str | None) -> Iterator[tuple[str, list[list[Any]]]]:
    """The archive's rows in batches, each of one table, in archive order."""
    batch: list[list[Any]] = []
    current: str | None = None
    for table, row in _table_rows(archive, keys):
        if current is not None and (table != current or len(batch) >= _BATCH):
            yield current, batch
            batch = []
        current = table
        batch.append(row)
    if current is not None and batch:
        yield current, batch


def _restore_sqlite(path: str, manifest: dict[str, Any], archive: Path, keys: str | None) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            connection.execute(f"DELETE FROM {table}")
        for table, batch in _batches(archive, keys):
            columns = manifest["tables"][table]["columns"]
            connection.executemany(_insert_sql(table, columns, "?"), batch)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    finally:
        connection.close()


async def _restore_postgres(
    url: str, manifest: dict[str, Any], archive: Path, keys: str | None
) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        async with connection.transaction():
            for table in TABLES:
                await connection.execute(f"DELETE FROM {table}")
            for table, batch in _batches(archive, keys):
                columns = manifest["tables"][table]["columns"]
                await connection.executemany(
                    _insert_sql(table, columns, "${}"), [tuple(r) for r in batch]
                )
    finally:
        await connection.close()
