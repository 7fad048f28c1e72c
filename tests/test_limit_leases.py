"""Redis limits for very high rates: leases of several requests, spent locally, never
admitting past the limit; ordinary rates stay exact."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config.rates import parse_rate
from gateway.ops.metrics import Metrics
from gateway.resilience.limit_leases import lease_size
from gateway.resilience.limiter import Window
from gateway.resilience.redis_limiter import RedisLimiter
from gateway.resilience.shared_redis import SharedRedis
from tests.services import REDIS_URL


def windows(*rates: str, bucket: str = "key:a") -> tuple[Window, ...]:
    return tuple(Window(bucket, parse_rate(rate)) for rate in rates)


@pytest.mark.parametrize(
    ("rates", "size"),
    [
        (("60/minute",), 1),
        (("1999/minute",), 1),
        (("2000/minute",), 2),
        (("100000000/minute",), 256),
        (("100000000/minute", "60/minute"), 1),  # the smallest window decides
    ],
)
def test_only_rates_of_thousands_are_leased(rates: tuple[str, ...], size: int) -> None:
    assert lease_size(windows(*rates)) == size


@pytest.fixture
async def replicas(redis_prefix: str) -> Any:
    made: list[SharedRedis] = []

    def replica() -> tuple[RedisLimiter, Metrics]:
        metrics = Metrics()
        redis = SharedRedis(REDIS_URL, metrics, prefix=redis_prefix, timeout_s=2)
        made.append(redis)
        return RedisLimiter(redis, metrics), metrics

    yield replica
    for redis in made:
        await redis.close()


def decided(metrics: Metrics, where: str) -> float:
    value = metrics.registry.get_sample_value("tollway_limiter_decisions_total", {"backend": where})
    return value or 0.0


async def test_a_high_rate_asks_redis_once_per_lease(replicas: Any) -> None:
    limiter, metrics = replicas()
    high = windows("100000000/minute")
    for _ in range(600):
        assert (await limiter.hit(high)).allowed
    assert decided(metrics, "redis") == 3  # 256 + 256 + 88: three leases for 600 requests
    assert decided(metrics, "lease") == 597


async def test_leases_never_admit_past_the_limit_across_replicas(replicas: Any) -> None:
    (first, _), (second, _) = replicas(), replicas()
    limited = windows("2000/day")  # leased two at a time; refills too slowly to matter here
    results = await asyncio.gather(
        *(limiter.hit(limited) for _ in range(1500) for limiter in (first, second))
    )
    admitted = sum(1 for decision in results if decision.allowed)
    assert 2000 - 2 * 2 <= admitted <= 2000  # at most a lease per replica left unused


async def test_an_ordinary_rate_is_decided_by_redis_every_time(replicas: Any) -> None:
    (first, metrics), (second, _) = replicas(), replicas()
    limited = windows("10/minute")
    results = [await limiter.hit(limited) for _ in range(15) for limiter in (first, second)]
    assert [d.allowed for d in results] == [True] * 10 + [False] * 20
    assert decided(metrics, "lease") == 0


async def test_leased_answers_count_down_in_their_headers(replicas: Any) -> None:
    limiter, _ = replicas()
    high = windows("100000000/minute")
    remaining = [(await limiter.hit(high)).windows[0].remaining for _ in range(5)]
    assert remaining == [99_999_999 - n for n in range(5)]


async def test_asking_without_counting_spends_nothing_from_a_lease(replicas: Any) -> None:
    limiter, _ = replicas()
    high = windows("100000000/minute")
    await limiter.hit(high)
    before = (await limiter.hit(high, cost=0)).windows[0].remaining
    after = (await limiter.hit(high, cost=0)).windows[0].remaining
    assert before == after


async def test_concurrent_requests_share_one_lease_instead_of_each_taking_one(
    replicas: Any,
) -> None:
    limiter, metrics = replicas()
    high = windows("100000000/minute")
    results = await asyncio.gather(*(limiter.hit(high) for _ in range(1000)))
    assert all(decision.allowed for decision in results)
    assert decided(metrics, "redis") == 4  # ceil(1000 / 256), not 1000


async def test_leases_can_be_turned_off(redis_prefix: str) -> None:
    metrics = Metrics()
    redis = SharedRedis(REDIS_URL, metrics, prefix=redis_prefix, timeout_s=2)
    limiter = RedisLimiter(redis, metrics, lease_s=0)
    try:
        for _ in range(20):
            await limiter.hit(windows("100000000/minute"))
        assert decided(metrics, "redis") == 20 and decided(metrics, "lease") == 0
    finally:
        await redis.close()
