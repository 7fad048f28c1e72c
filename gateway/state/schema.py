"""The state store's schema, as numbered migrations written once for both databases.

A short migration table (``tollway_migrations``) rather than a library: the schema is
small, the same SQL runs on SQLite and Postgres, and each migration is applied inside
one transaction holding a lock (Postgres: an advisory lock; SQLite: ``BEGIN
IMMEDIATE``), so replicas starting at once apply it exactly once.

Migration 2 adds what the rest of the OpenAI surface records (cached and reasoning
tokens, audio, images) and the owners of stored responses. Migration 3 makes usage
exactly once: a record is unique by its request id and its time (the writer inserts with
``ON CONFLICT DO NOTHING``, so a batch written again after a cancelled flush or a
spill-file replay adds nothing, while two requests that came with the same
``X-Request-ID`` are both billed), and ``outcome`` records how a stream ended for its
client. The table is rebuilt rather than altered: a store written by an older version may
hold duplicates (rows of the same record, same time), which a copy with ``ON CONFLICT DO
NOTHING`` drops in the same SQL on both databases.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS"]

_USAGE_V2: Final = (
    "at, day, request_id, key_id, tenant, route_class, route, backend, model, status, "
    "latency_ms, tokens_in, tokens_out, rows_out, bytes_out, cache_hit, tokens_cached, "
    "tokens_reasoning, audio_seconds, audio_bytes, images, image_size"
)
"""The usage table's columns before migration 3, all copied into its new table."""

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            """CREATE TABLE tollway_keys (
                id TEXT PRIMARY KEY,
                digest TEXT NOT NULL UNIQUE,
                previous_digest TEXT,
                previous_valid_until DOUBLE PRECISION,
                tenant TEXT NOT NULL,
                scopes TEXT NOT NULL,
                models TEXT,
                datasets TEXT,
                limits TEXT,
                budget TEXT,
                name TEXT,
                expires_at DOUBLE PRECISION,
                revoked_at DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE tollway_revoked_config_keys (
                id TEXT PRIMARY KEY,
                revoked_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE tollway_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
            """INSERT INTO tollway_meta (name, value) VALUES ('keys_version', 0)""",
            """CREATE TABLE tollway_usage (
                at DOUBLE PRECISION NOT NULL,
                day TEXT NOT NULL,
                request_id TEXT,
                key_id TEXT,
                tenant TEXT,
                route_class TEXT,
                route TEXT,
                backend TEXT,
                model TEXT,
                status INTEGER NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                tokens_in BIGINT NOT NULL,
                tokens_out BIGINT NOT NULL,
                rows_out BIGINT NOT NULL,
                bytes_out BIGINT NOT NULL,
                cache_hit INTEGER NOT NULL
            )""",
            "CREATE INDEX tollway_usage_at ON tollway_usage (at)",
            "CREATE INDEX tollway_usage_key_at ON tollway_usage (key_id, at)",
            """CREATE TABLE tollway_audit (
                at DOUBLE PRECISION NOT NULL,
                action TEXT NOT NULL,
                key_id TEXT,
                actor TEXT,
                request_id TEXT,
                client_ip TEXT,
                detail TEXT
            )""",
            "CREATE INDEX tollway_audit_at ON tollway_audit (at)",
        ),
    ),
    (
        2,
        (
            # what the rest of the OpenAI surface uses, beside tokens in and out
            "ALTER TABLE tollway_usage ADD COLUMN tokens_cached BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE tollway_usage ADD COLUMN tokens_reasoning BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE tollway_usage ADD COLUMN audio_seconds "
            "DOUBLE PRECISION NOT NULL DEFAULT 0",
            "ALTER TABLE tollway_usage ADD COLUMN audio_bytes BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE tollway_usage ADD COLUMN images BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE tollway_usage ADD COLUMN image_size TEXT",
            # which tenant created each stored response id Tollway relayed, until it expires
            """CREATE TABLE tollway_response_owners (
                id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                key_id TEXT,
                backend TEXT NOT NULL,
                model TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX tollway_response_owners_expires ON tollway_response_owners (expires_at)",
        ),
    ),
    (
        3,
        (
            "DROP INDEX tollway_usage_at",
            "DROP INDEX tollway_usage_key_at",
            "ALTER TABLE tollway_usage RENAME TO tollway_usage_v1",
            """CREATE TABLE tollway_usage (
                at DOUBLE PRECISION NOT NULL,
                day TEXT NOT NULL,
                request_id TEXT,
                key_id TEXT,
                tenant TEXT,
                route_class TEXT,
                route TEXT,
                backend TEXT,
                model TEXT,
                status INTEGER NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                tokens_in BIGINT NOT NULL,
                tokens_out BIGINT NOT NULL,
                rows_out BIGINT NOT NULL,
                bytes_out BIGINT NOT NULL,
                cache_hit INTEGER NOT NULL,
                tokens_cached BIGINT NOT NULL DEFAULT 0,
                tokens_reasoning BIGINT NOT NULL DEFAULT 0,
                audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
                audio_bytes BIGINT NOT NULL DEFAULT 0,
                images BIGINT NOT NULL DEFAULT 0,
                image_size TEXT,
                outcome TEXT,
                UNIQUE (at, request_id)
            )""",
            f"""INSERT INTO tollway_usage ({_USAGE_V2})
                SELECT {_USAGE_V2} FROM tollway_usage_v1 WHERE 1 = 1 ORDER BY at
                ON CONFLICT DO NOTHING""",
            "DROP TABLE tollway_usage_v1",
            # (at, request_id) is unique and ordered by time: it is the time index too,
            # and a new record lands at its end
            "CREATE INDEX tollway_usage_key_at ON tollway_usage (key_id, at)",
        ),
    ),
)
