"""The response cache and shared limits, in memory and through the real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config.keyhash import hash_key
from tests.conftest import (
    ADMIN_KEY,
    OTHER_TENANT_KEY,
    USER_KEY,
    base_config_data,
    make_config,
    merge,
)
from tests.fake_providers import UPSTREAM_KEY, FakeProvider
from tests.services import REDIS_URL, OwnRedis

TEN_KEY = "tw_ten-per-minute-0123456789abcdefgh"
AUTH = {"Authorization": f"Bearer {USER_KEY}"}
Start = Callable[..., Awaitable[TestClient]]

DATASET = {
    "backend": "wh",
    "table": "orders",
    "tenant_column": "tenant_id",
    "dimensions": {"region": "region"},
    "metrics": {"revenue": "sum(amount)"},
}


def config_data(fake_url: str, **extra: Any) -> dict[str, Any]:
    data = {
        "backends": {
            "wh": {"type": "duckdb", "demo": True},
            "openai": {"type": "openai", "base_url": f"{fake_url}/v1", "api_key": UPSTREAM_KEY,
                       "timeout_s": 5, "retries": 0, "idle_timeout_s": 0.5},
        },
        "models": {"gpt-4o-mini": {"backend": "openai"}},
        "datasets": {"orders": DATASET},
        "cache": {"routes": ["embeddings", "chat", "query", "datasets", "search"], "max_rows": 5},
        "keys": base_config_data()["keys"]
        + [{"id": "ten", "hash": hash_key(TEN_KEY), "tenant": "acme", "scopes": ["query"],
            "limits": ["10/minute"]}],
    }  # fmt: skip
    return merge(data, extra)


@pytest.fixture
def start(aiohttp_client: Any, fake: FakeProvider) -> Start:
    async def build(**extra: Any) -> TestClient:
        data = config_data(fake.url, **extra)  # type: ignore[attr-defined]
        client: TestClient = await aiohttp_client(create_app(make_config(data)))
        return client

    return build


async def post(
    client: TestClient, path: str, body: Any, key: str = USER_KEY, **headers: str
) -> Any:
    return await client.post(path, json=body, headers={"Authorization": f"Bearer {key}", **headers})


QUERY = {"backend": "wh", "sql": "SELECT region, count(*) AS n FROM orders GROUP BY region"}


async def test_miss_hit_bypass_and_age(start: Start) -> None:
    client = await start()
    first = await post(client, "/v1/query", QUERY)
    assert first.headers["X-Cache"] == "MISS"
    second = await post(client, "/v1/query", QUERY)
    assert second.headers["X-Cache"] == "HIT" and int(second.headers["Age"]) >= 0
    assert await second.json() == await first.json()
    bypass = await post(client, "/v1/query", QUERY, **{"Cache-Control": "no-store"})
    assert bypass.headers["X-Cache"] == "BYPASS"
    fresh = await post(client, "/v1/query", QUERY, **{"Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "MISS"
    uncached = await client.get("/v1/datasets", headers=AUTH)
    assert "X-Cache" not in uncached.headers  # not a cached route class
    metrics = await (await client.get("/metrics")).text()
    assert 'tollway_cache_requests_total{result="hit",route_class="query"} 1.0' in metrics


async def test_two_tenants_never_share_an_entry(start: Start) -> None:
    client = await start()
    body = {"dimensions": ["region"], "metrics": ["revenue"], "order_by": ["region"]}
    acme = await post(client, "/v1/datasets/orders/query", body)
    globex = await post(client, "/v1/datasets/orders/query", body, key=OTHER_TENANT_KEY)
    assert acme.headers["X-Cache"] == globex.headers["X-Cache"] == "MISS"
    assert (await acme.json())["rows"] != (await globex.json())["rows"]


async def test_thirty_identical_misses_make_one_upstream_call(
    start: Start, fake: FakeProvider
) -> None:
    client = await start()
    fake.hang_s = 0.3
    fake.script("embeddings", "hang")  # the first call is slow; the others arrive meanwhile
    body = {"model": "gpt-4o-mini", "input": ["same"]}
    answers = await asyncio.gather(*(post(client, "/v1/embeddings", body) for _ in range(30)))
    assert {a.status for a in answers} == {200}
    bodies = {await a.read() for a in answers}
    assert len(bodies) == 1
    assert fake.hits("embeddings") == 1
    assert sorted(a.headers["X-Cache"] for a in answers).count("MISS") == 1


async def test_errors_and_answers_over_max_rows_are_not_stored(
    start: Start, fake: FakeProvider
) -> None:
    client = await start()
    fake.script("embeddings", "400-context")
    body = {"model": "gpt-4o-mini", "input": "x"}
    assert (await post(client, "/v1/embeddings", body)).status == 400
    again = await post(client, "/v1/embeddings", body)
    assert again.status == 200 and again.headers["X-Cache"] == "MISS"
    many = {"backend": "wh", "sql": "SELECT order_id FROM orders LIMIT 10"}  # over max_rows 5
    assert (await post(client, "/v1/query", many)).headers["X-Cache"] == "MISS"
    assert (await post(client, "/v1/query", many)).headers["X-Cache"] == "MISS"


async def test_a_completed_stream_replays_for_the_sdk_and_a_cut_one_is_not_kept(
    start: Start, fake: FakeProvider
) -> None:
    client = await start()
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=USER_KEY, max_retries=0)
    messages = [{"role": "user", "content": "stream me"}]

    async def read() -> tuple[str, str]:
        raw = await api.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
        )
        text = ""
        async for chunk in raw.parse():
            text += "".join(c.delta.content or "" for c in chunk.choices)
        return raw.headers["X-Cache"], text

    assert await read() == ("MISS", "Hello there")
    assert await read() == ("HIT", "Hello there")
    assert fake.hits("chat") == 1
    messages = [{"role": "user", "content": "cut me"}]
    fake.script("chat", "cut", *["diverge"] * 4)  # cut, and every new try answers otherwise
    with pytest.raises(openai.APIError):
        await read()
    fake.forget_scripts()
    assert (await read())[0] == "MISS"


async def test_dataset_definition_change_invalidates(start: Start, redis_prefix: str) -> None:
    shared = {"redis": REDIS_URL, "redis_prefix": redis_prefix, "cache": {"backend": "redis"}}
    body = {"metrics": ["revenue"]}
    first = await start(**shared)
    assert (await post(first, "/v1/datasets/orders/query", body)).headers["X-Cache"] == "MISS"
    assert (await post(first, "/v1/datasets/orders/query", body)).headers["X-Cache"] == "HIT"
    changed = await start(
        **shared, datasets={"orders": {**DATASET, "metrics": {"revenue": "sum(amount) * 2"}}}
    )
    answer = await post(changed, "/v1/datasets/orders/query", body)
    assert answer.headers["X-Cache"] == "MISS"


async def test_two_replicas_share_entries_and_limits_through_redis(
    start: Start, redis_prefix: str
) -> None:
    shared = {"redis": REDIS_URL, "redis_prefix": redis_prefix, "cache": {"backend": "redis"}}
    one, two = await start(**shared), await start(**shared)
    assert (await post(one, "/v1/query", QUERY)).headers["X-Cache"] == "MISS"
    assert (await post(two, "/v1/query", QUERY)).headers["X-Cache"] == "HIT"
    unique = [{"backend": "wh", "sql": f"SELECT {i} AS n"} for i in range(30)]
    answers = await asyncio.gather(
        *(post(one if i % 2 else two, "/v1/query", b, key=TEN_KEY) for i, b in enumerate(unique))
    )
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 10 + [429] * 20
    assert all("Retry-After" in a.headers for a in answers if a.status == 429)


async def test_redis_killed_under_load_fails_no_request(start: Start, own_redis: OwnRedis) -> None:
    client = await start(redis=own_redis.url, cache={"backend": "redis"})
    failures: list[int] = []

    async def load(count: int) -> None:
        for i in range(count):
            response = await post(
                client, "/v1/query", {"backend": "wh", "sql": f"SELECT {i % 7} AS n"}
            )
            if response.status != 200:
                failures.append(response.status)

    async def metric(name: str) -> float:
        text = await (await client.get("/metrics")).text()
        line = next(line for line in text.splitlines() if line.startswith(name))
        return float(line.rsplit(" ", 1)[1])

    worker = asyncio.ensure_future(load(150))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(own_redis.kill)
    await worker
    assert failures == []
    assert await metric("tollway_redis_fallback_active") == 1.0
    local_before = await metric('tollway_limiter_decisions_total{backend="local"}')
    assert local_before > 0
    await asyncio.to_thread(own_redis.start)
    started = time.monotonic()
    while time.monotonic() - started < 10:
        await load(5)
        if await metric("tollway_redis_fallback_active") == 0.0:
            break
        await asyncio.sleep(0.2)
    assert await metric("tollway_redis_fallback_active") == 0.0
    assert failures == []
    detailed = await client.get(
        "/health/detailed", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert (await detailed.json())["components"]["redis"]["ok"] is True
    assert (await client.get("/health/ready")).status == 200
