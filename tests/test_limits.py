"""Per-key limits: several windows, exact under concurrency, with the headers clients read."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config.rates import parse_rate
from gateway.resilience.limiter import LocalLimiter, Window
from tests.conftest import OTHER_TENANT_KEY, USER_KEY
from tests.test_request_path import app_with_test_routes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def windows(*texts: str, bucket: str = "k") -> list[Window]:
    return [Window(bucket, parse_rate(t)) for t in texts]


def test_a_full_burst_is_admitted_then_refused() -> None:
    limiter = LocalLimiter(clock=Clock())
    results = [limiter.hit_now(windows("5/minute")).allowed for _ in range(7)]
    assert results == [True] * 5 + [False] * 2


def test_capacity_returns_at_the_rate() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    for _ in range(6):
        limiter.hit_now(windows("6/minute"))
    refused = limiter.hit_now(windows("6/minute"))
    assert not refused.allowed and 9.9 < refused.retry_after_s <= 10.0
    clock.now += 10.0
    assert limiter.hit_now(windows("6/minute")).allowed
    assert not limiter.hit_now(windows("6/minute")).allowed


def test_a_refusal_by_one_window_spends_nothing_in_the_others() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    both = windows("10/minute", "3/hour")
    assert all(limiter.hit_now(both).allowed for _ in range(3))
    assert not limiter.hit_now(both).allowed
    minute_only = windows("10/minute")
    assert sum(limiter.hit_now(minute_only).allowed for _ in range(10)) == 7


def test_remaining_and_reset_follow_the_tightest_window() -> None:
    limiter = LocalLimiter(clock=Clock())
    decision = limiter.hit_now(windows("60/minute", "5/hour"))
    assert decision.tightest.rate.count == 5
    assert decision.tightest.remaining == 4
    assert decision.tightest.reset_s == 720.0


def test_buckets_are_independent() -> None:
    limiter = LocalLimiter(clock=Clock())
    assert limiter.hit_now(windows("1/minute", bucket="a")).allowed
    assert limiter.hit_now(windows("1/minute", bucket="b")).allowed
    assert not limiter.hit_now(windows("1/minute", bucket="a")).allowed


def test_full_windows_are_forgotten() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    for bucket in range(100):
        limiter.hit_now(windows("10/second", bucket=str(bucket)))
    clock.now += 3600
    limiter.hit_now(windows("10/second", bucket="new"))
    assert len(limiter) == 1


async def test_exactly_the_limit_passes_under_50_concurrent_requests(
    aiohttp_client: Any, auth: Any
) -> None:
    client = await aiohttp_client(app_with_test_routes({"limits": {"default": ["20/minute"]}}))
    responses = await asyncio.gather(
        *(client.post("/test/echo", json={}, headers=auth(USER_KEY)) for _ in range(50))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 20 + [429] * 30
    refused = next(r for r in responses if r.status == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json())["error"]["type"] == "rate_limit_error"


async def test_limited_answers_carry_ietf_and_legacy_headers(
    aiohttp_client: Any, auth: Any
) -> None:
    client = await aiohttp_client(
        app_with_test_routes({"limits": {"default": ["10/minute", "100/hour"]}})
    )
    response = await client.post("/test/echo", json={}, headers=auth(USER_KEY))
    assert (
        response.headers["RateLimit-Policy"]
        == '"10-per-60s";q=10;w=60, "100-per-3600s";q=100;w=3600'
    )
    assert response.headers["RateLimit"] == '"10-per-60s";r=9;t=6'
    assert response.headers["X-RateLimit-Limit"] == "10"
    assert response.headers["X-RateLimit-Remaining"] == "9"
    assert response.headers["X-RateLimit-Reset"] == "6"


async def test_limits_are_per_key(aiohttp_client: Any, auth: Any) -> None:
    client = await aiohttp_client(app_with_test_routes({"limits": {"default": ["2/minute"]}}))
    for _ in range(2):
        assert (await client.post("/test/echo", json={}, headers=auth(USER_KEY))).status == 200
    assert (await client.post("/test/echo", json={}, headers=auth(USER_KEY))).status == 429
    other = await client.post("/test/echo", json={}, headers=auth(OTHER_TENANT_KEY))
    assert other.status == 200


async def test_route_class_limits_apply_on_top_of_key_limits(
    aiohttp_client: Any, auth: Any
) -> None:
    client = await aiohttp_client(
        app_with_test_routes(
            {"limits": {"default": ["100/minute"], "routes": {"query": ["3/minute"]}}}
        )
    )
    statuses = [
        (await client.post("/test/echo", json={}, headers=auth(USER_KEY))).status for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


async def test_a_keys_own_limits_replace_the_default(aiohttp_client: Any, auth: Any) -> None:
    from tests.conftest import base_config_data

    keys = base_config_data()["keys"]
    keys[1]["limits"] = ["1/minute"]
    client = await aiohttp_client(app_with_test_routes({"keys": keys}))
    assert (await client.post("/test/echo", json={}, headers=auth(USER_KEY))).status == 200
    assert (await client.post("/test/echo", json={}, headers=auth(USER_KEY))).status == 429


async def test_rejections_are_counted_in_metrics(aiohttp_client: Any, auth: Any) -> None:
    client = await aiohttp_client(app_with_test_routes({"limits": {"default": ["1/minute"]}}))
    for _ in range(3):
        await client.post("/test/echo", json={}, headers=auth(USER_KEY))
    text = await (await client.get("/metrics")).text()
    assert 'tollway_limit_rejections_total{limit="key",route="query"} 2.0' in text
