"""A key made on one replica works on every replica at once: an unknown key is looked up
in the state store, once (coalesced), bounded in time, rate-limited per address and
negatively cached, so a flood of bad keys never reaches the store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.edge.key_sync import key_sync_key
from tests.conftest import ADMIN_KEY, make_config

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(params=["sqlite", "postgres"])
def shared_state(request: Any, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


async def replica(aiohttp_client: Any, state: str, tmp_path: Path, **extra: Any) -> TestClient:
    data = {"state": state, "state_spill_dir": str(tmp_path / "spill"), **extra}
    client: TestClient = await aiohttp_client(create_app(make_config(data)))
    return client


async def without_polling(client: TestClient) -> None:
    """This replica stops polling the store for changes (its sync sleeps an hour)."""
    assert client.app is not None
    client.app[key_sync_key].poll_s = 3600
    await asyncio.sleep(0.4)  # the sleep in progress ends; the next one is the hour


async def models(client: TestClient, key: str) -> int:
    response = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    await response.read()
    return response.status


def lookups(client: TestClient) -> dict[str, float]:
    from gateway.ops.metrics import metrics_key

    assert client.app is not None
    counter = client.app[metrics_key].key_lookups
    return {
        s.labels["result"]: s.value
        for s in counter.collect()[0].samples
        if s.name.endswith("_total")
    }


async def test_a_key_made_on_one_replica_works_at_once_on_another(
    aiohttp_client: Any, shared_state: str, tmp_path: Path
) -> None:
    one = await replica(aiohttp_client, shared_state, tmp_path)
    two = await replica(aiohttp_client, shared_state, tmp_path)
    await without_polling(two)
    made = await (
        await one.post("/admin/keys", json={"tenant": "t", "scopes": ["llm"]}, headers=ADMIN)
    ).json()
    started = time.monotonic()
    assert await models(two, made["key"]) == 200  # the first request, no 401 before it
    assert time.monotonic() - started < 1
    assert await models(two, made["key"]) == 200  # now from this replica's own table
    assert lookups(two) == {"found": 1.0}
    # Revoked on the first replica: the second learns it with its next refresh (a
    # revoke is not a lookup), which replaces what the lookup added.
    await one.post(f"/admin/keys/{made['id']}/revoke", headers=ADMIN)
    assert two.app is not None
    await two.app[key_sync_key].refresh()
    assert await models(two, made["key"]) == 401


async def test_a_revoked_key_looked_up_is_refused_as_revoked(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    state = f"sqlite:///{tmp_path / 'shared.db'}"
    one = await replica(aiohttp_client, state, tmp_path)
    two = await replica(aiohttp_client, state, tmp_path)
    await without_polling(two)
    made = await (
        await one.post("/admin/keys", json={"tenant": "t", "scopes": ["llm"]}, headers=ADMIN)
    ).json()
    await one.post(f"/admin/keys/{made['id']}/revoke", headers=ADMIN)
    response = await two.get("/v1/models", headers={"Authorization": f"Bearer {made['key']}"})
    assert response.status == 401
    assert "revoked" in (await response.json())["error"]["message"]


async def test_the_same_unknown_key_reaches_the_store_once_then_is_refused_from_memory(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await replica(aiohttp_client, f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    bad = "tw_not-a-key-0123456789abcdefghijklmnopq"
    statuses = await asyncio.gather(*(models(client, bad) for _ in range(20)))
    assert statuses == [401] * 20
    for _ in range(10):
        assert await models(client, bad) == 401
    counted = lookups(client)
    assert counted["unknown"] == 1  # twenty at once share one query; the rest are cached
    assert counted.get("cached", 0) >= 10


async def test_a_flood_of_distinct_bad_keys_reaches_the_store_only_up_to_the_limit(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await replica(
        aiohttp_client, f"sqlite:///{tmp_path / 's.db'}", tmp_path,
        limits={"key_lookups_per_ip": ["5/minute"], "per_ip": ["1000/minute"]},
    )  # fmt: skip
    for i in range(40):
        assert await models(client, f"tw_guess-{i:04d}-0123456789abcdefghijkl") == 401
    assert lookups(client) == {"unknown": 5.0, "limited": 35.0}


async def test_a_store_that_does_not_answer_costs_at_most_the_lookup_timeout(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    unreachable = f"sqlite:///{tmp_path / 'missing-folder' / 's.db'}"
    client = await replica(
        aiohttp_client, unreachable, tmp_path, server={"key_lookup_timeout_s": 0.2}
    )
    started = time.monotonic()
    assert await models(client, "tw_unknown-0123456789abcdefghijklmnopqr") == 401
    assert time.monotonic() - started < 1
    assert lookups(client) == {"failed": 1.0}
