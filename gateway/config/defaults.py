"""The embedded default: what `tollway serve` runs when it is given no config file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.keyhash import hash_key, new_key

__all__ = ["embedded_config_data"]


def embedded_config_data(env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The default config as parsed YAML would be, and the demo key it accepts."""
    # Workers of one `serve --workers N` share the key their parent made.
    demo_key = env.get("TOLLWAY_DEMO_KEY") or new_key()
    data: dict[str, Any] = {
        # The console is on: bound to 127.0.0.1, a newcomer signs in with the demo key.
        "server": {"host": "127.0.0.1", "port": 8080, "console": True},
        "state": "sqlite:///./tollway-state.db",
        # One DuckDB thread: every thread that runs DuckDB queries keeps allocator caches
        # of its own, and with four the process grew for minutes under load (bench soak);
        # the demo tables are small, so one query at a time costs nothing noticeable.
        "backends": {"demo": {"type": "duckdb", "demo": True, "timeout_s": 30, "threads": 1}},
        "datasets": {
            "orders": {
                "backend": "demo",
                "table": "orders",
                "tenant_column": "tenant_id",
                "time_dimension": "day",
                "dimensions": {
                    "region": "region",
                    "product": "product",
                    "day": "CAST(ordered_at AS DATE)",
                    "month": "strftime(ordered_at, '%Y-%m')",
                },
                "metrics": {
                    "revenue": "sum(amount)",
                    "orders": "count(*)",
                    "units": "sum(quantity)",
                },
            }
        },
        "keys": [
            {
                "id": "demo",
                "hash": hash_key(demo_key),
                "tenant": "acme",
                "scopes": ["llm", "search", "query", "odata", "admin"],
                "name": "demo key (embedded default)",
            }
        ],
    }
    return data, demo_key
