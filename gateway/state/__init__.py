"""Keys, usage and audit kept in a database: SQLite (the embedded default) or Postgres."""
