"""How many threads one DuckDB query may use: by default as many as queries run at once,
but no more than the machine's cores; configurable, and checked."""

from __future__ import annotations

import os

import pytest

from backends.base import CallContext
from backends.duckdb import create
from gateway.config import ConfigError
from gateway.resilience.adapters import create_backend
from tests.conftest import make_config


async def _threads_of(options: dict[str, object]) -> int:
    backend = create("wh", options, timeout_s=5, connect_timeout_s=1)
    await backend.start()
    try:
        result = await backend.query(  # type: ignore[attr-defined]
            "SELECT current_setting('threads')", [], CallContext("t", "-"), timeout_s=5
        )
    finally:
        await backend.close()
    return int(result.rows[0][0])


@pytest.mark.parametrize("at_once", [1, 2, 4, 64])
async def test_a_query_gets_no_more_threads_than_the_machine_has_cores(at_once: int) -> None:
    expected = min(at_once, os.cpu_count() or 1)
    assert await _threads_of({"threads": at_once}) == expected


async def test_query_threads_can_be_set() -> None:
    assert await _threads_of({"threads": 4, "query_threads": 3}) == 3


@pytest.mark.parametrize("wrong", [0, 65, "2", True, 1.5])
def test_query_threads_must_be_a_whole_number_from_1_to_64(wrong: object) -> None:
    config = make_config({"backends": {"wh": {"type": "duckdb", "query_threads": wrong}}})
    with pytest.raises(ConfigError, match=r"backends\.wh\.query_threads"):
        create_backend(config.backends["wh"])
