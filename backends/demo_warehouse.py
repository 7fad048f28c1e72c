"""The demo warehouse `make run` serves: orders of two tenants over six months."""

from __future__ import annotations

from typing import Any

__all__ = ["create_demo_tables"]

DEMO_ORDERS_SQL = """
CREATE TABLE orders AS
SELECT
    i AS order_id,
    CASE WHEN i % 3 = 0 THEN 'globex' ELSE 'acme' END AS tenant_id,
    (['north', 'south', 'east', 'west'])[1 + i % 4] AS region,
    (['widget', 'gadget', 'gizmo'])[1 + (i * 7) % 3] AS product,
    TIMESTAMP '2026-01-01' + to_hours((i * 97) % (181 * 24)) AS ordered_at,
    CAST(5 + ((i * 37) % 50000) / 100.0 AS DECIMAL(12, 2)) AS amount,
    1 + i % 5 AS quantity
FROM range(1, 3001) AS t(i)
"""


def create_demo_tables(connection: Any) -> None:
    """Create the demo tables on a DuckDB connection (before its configuration locks)."""
    connection.execute(DEMO_ORDERS_SQL)
