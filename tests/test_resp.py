"""The pipelined Redis client against real redis-servers: the machine's, and ones of the
test's own that it may protect with a password or kill."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.resilience.resp import RedisConnectionError, RedisReplyError, RespClient, Script
from tests.services import REDIS_URL, OwnRedis


@pytest.fixture
async def client(redis_prefix: str) -> Any:
    redis = RespClient(REDIS_URL)
    yield redis
    await redis.close()


async def test_replies_come_back_typed(client: RespClient, redis_prefix: str) -> None:
    key = f"{redis_prefix}k"
    assert await client.command("SET", key, b"v\x00\xff", "PX", 10_000) == b"OK"
    assert await client.command("GET", key) == b"v\x00\xff"
    assert await client.command("INCRBY", f"{redis_prefix}n", 41) == 41
    assert await client.command("GET", f"{redis_prefix}missing") is None
    assert await client.command("SET", key, b"x", "NX") is None  # not set: it exists
    assert await client.command("MGET", key, f"{redis_prefix}missing") == [b"v\x00\xff", None]


async def test_concurrent_commands_share_one_write_and_keep_their_order(
    client: RespClient, redis_prefix: str
) -> None:
    name = redis_prefix.replace(":", "-").rstrip("-")
    await client.command("CLIENT", "SETNAME", name)
    keys = [f"{redis_prefix}{i}" for i in range(200)]
    await asyncio.gather(*(client.command("SET", k, str(i)) for i, k in enumerate(keys)))
    replies = await asyncio.gather(*(client.command("GET", k) for k in keys))
    assert replies == [str(i).encode() for i in range(200)]
    listing = await client.command("CLIENT", "LIST")
    assert listing.count(f"name={name} ".encode()) == 1  # one connection carried them all


async def test_an_error_reply_raises_and_the_connection_goes_on(
    client: RespClient, redis_prefix: str
) -> None:
    await client.command("SET", f"{redis_prefix}s", "text")
    with pytest.raises(RedisReplyError, match="WRONGTYPE|not an integer"):
        await client.command("INCR", f"{redis_prefix}s")
    assert await client.command("PING") == b"PONG"


async def test_a_timed_out_reply_is_dropped_without_shifting_the_next(
    client: RespClient, redis_prefix: str
) -> None:
    with pytest.raises(TimeoutError):
        await client.command("BLPOP", f"{redis_prefix}empty", "0.3", timeout_s=0.05)
    await client.command("SET", f"{redis_prefix}after", "mine")
    assert await client.command("GET", f"{redis_prefix}after") == b"mine"


async def test_a_script_unknown_to_redis_is_sent_once_then_called_by_sha(
    client: RespClient, redis_prefix: str
) -> None:
    script = Script("return {KEYS[1], ARGV[1] + 1}")
    await client.command("SCRIPT", "FLUSH")
    assert await client.command("SCRIPT", "EXISTS", script.sha) == [0]
    assert await script(client, [f"{redis_prefix}a"], [41]) == [f"{redis_prefix}a".encode(), 42]
    assert await client.command("SCRIPT", "EXISTS", script.sha) == [1]


async def test_password_and_database_come_from_the_url() -> None:
    server = OwnRedis("--requirepass", "s3cret")
    server.start()
    try:
        good = RespClient(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        assert b" db=3 " in await good.command("CLIENT", "INFO")
        await good.close()
        wrong = RespClient(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(RedisConnectionError):
            await wrong.command("PING")
        await wrong.close()
    finally:
        server.kill()


async def test_a_lost_connection_fails_what_was_in_flight_and_reconnects(
    own_redis: OwnRedis,
) -> None:
    redis = RespClient(own_redis.url)
    try:
        assert await redis.command("PING") == b"PONG"
        pending = asyncio.ensure_future(redis.command("BLPOP", "never", "5"))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(own_redis.kill)
        with pytest.raises(RedisConnectionError):
            await pending
        with pytest.raises(RedisConnectionError):
            await redis.command("PING")  # still down: refused, not hung
        await asyncio.to_thread(own_redis.start)
        assert await redis.command("PING") == b"PONG"
    finally:
        await redis.close()


def test_a_url_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RespClient("http://127.0.0.1:6379")


def test_the_client_works_on_uvloop_as_tollway_serves(redis_prefix: str) -> None:
    import uvloop

    async def exchange() -> Any:
        redis = RespClient(REDIS_URL)
        try:
            await redis.command("SET", f"{redis_prefix}uv", "ok")
            return await redis.command("GET", f"{redis_prefix}uv")
        finally:
            await redis.close()

    assert uvloop.run(exchange()) == b"ok"
