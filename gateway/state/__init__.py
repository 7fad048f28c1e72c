"""Keys, usage and audit kept in a database: SQLite (the embedded default) or Postgres.

One store interface with two implementations sharing their SQL and migrations, the
batch writer that records usage and audit off the request path (spilling to disk while
the store is away), the service that runs them with the app, the rules for changing a
stored key, portable backups, and the ``tollway state`` and ``tollway keys`` commands.

May import `gateway.config`, `gateway.errors`, `gateway.ops`, `gateway.resilience` and
`backends.secrets`. It knows nothing of requests: the front door hands it what to record.
"""
