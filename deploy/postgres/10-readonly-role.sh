#!/bin/sh
# Runs once, when the Postgres volume is new: a role for Tollway's data backend that can
# read and nothing else. Tollway's own state uses the owner role.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE tollway_reader LOGIN PASSWORD '${READONLY_PASSWORD}';
ALTER ROLE tollway_reader SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE ${POSTGRES_DB} TO tollway_reader;
CREATE SCHEMA IF NOT EXISTS warehouse AUTHORIZATION ${POSTGRES_USER};
GRANT USAGE ON SCHEMA warehouse TO tollway_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA warehouse GRANT SELECT ON TABLES TO tollway_reader;
SQL
