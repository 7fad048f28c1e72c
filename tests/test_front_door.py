"""The front door: per-IP limits before auth, compression, timing, the slow-request log,
error tracking, and request hygiene."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from typing import Any

import aiohttp
import brotli
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.app import create_app
from gateway.config import Config, ConfigError
from gateway.edge.client_ip import TrustedProxies, client_ip
from gateway.ops.error_tracking import error_tracker_key
from gateway.ops.request_usage import current_usage
from gateway.routing import RouteSpec, route_specs_key
from gateway.serve import serve
from tests.conftest import USER_KEY, make_config
from tests.services import REDIS_URL

BAD_KEY = "tw_guessed-0123456789abcdefghijklmnopq"
PROMPT = "my secret prompt about the merger"


async def big(request: web.Request) -> web.Response:
    rows = [{"id": i, "name": f"row {i}", "amount": i * 1.5} for i in range(500)]
    return web.json_response({"rows": rows})


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index in range(50):
        await response.write(f"data: {json.dumps({'i': index, 'pad': 'x' * 40})}\n\n".encode())
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    usage = current_usage.get()
    assert usage is not None
    await asyncio.sleep(float(request.query.get("s", "0.3")))
    usage.upstream_s += 0.25  # as the guard does for time spent on a backend
    return web.json_response({"ok": True})


async def explode(request: web.Request) -> web.Response:
    await request.read()
    raise RuntimeError(f"boom while holding {USER_KEY}")


def app_for(extra: dict[str, Any] | None = None) -> web.Application:
    app = create_app(make_config(extra))
    spec = RouteSpec("query", "query")
    for method, path, handler in (
        ("GET", "/test/big", big),
        ("GET", "/test/stream", stream),
        ("GET", "/test/slow", slow),
        ("POST", "/test/explode", explode),
    ):
        app[route_specs_key][app.router.add_route(method, path, handler)] = spec
    return app


def bearer(key: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **more}


# --- per-IP limits --------------------------------------------------------------------


async def test_61st_unauthenticated_request_in_a_minute_is_429(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for())
    statuses = [(await client.get("/v1/datasets")).status for _ in range(61)]
    assert statuses == [401] * 60 + [429]
    refused = await client.get("/v1/datasets")
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json())["error"]["code"] == "ip_rate_limit_exceeded"
    assert (await client.get("/health/ready")).status == 200  # probes are exempt
    assert (await client.get("/metrics")).status == 200


async def test_bad_keys_are_stopped_before_lookup_while_others_are_served(
    aiohttp_client: Any,
) -> None:
    client = await aiohttp_client(
        app_for({"server": {"trusted_proxies": ["127.0.0.1"]}, "limits": {"per_ip": ["5/minute"]}})
    )
    attacker = {"X-Forwarded-For": "198.51.100.7"}
    statuses = [
        (await client.get("/test/big", headers=bearer(BAD_KEY, **attacker))).status
        for _ in range(7)
    ]
    assert statuses == [401] * 5 + [429] * 2
    # Refused before the key is looked up: even a valid key from that address waits.
    assert (await client.get("/test/big", headers=bearer(USER_KEY, **attacker))).status == 429
    other = {"X-Forwarded-For": "203.0.113.9"}
    assert (await client.get("/test/big", headers=bearer(USER_KEY, **other))).status == 200
    assert (await client.get("/test/big", headers=bearer(BAD_KEY, **other))).status == 401
    metrics = await (await client.get("/metrics")).text()
    assert 'tollway_limit_rejections_total{limit="ip",route="query"} 3.0' in metrics


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    aiohttp_client: Any,
) -> None:
    client = await aiohttp_client(
        app_for({"server": {"trusted_proxies": ["10.0.0.0/8"]}, "limits": {"per_ip": ["3/minute"]}})
    )
    statuses = [
        (await client.get("/v1/datasets", headers={"X-Forwarded-For": f"192.0.2.{i}"})).status
        for i in range(4)
    ]
    assert statuses == [401, 401, 401, 429]


async def test_trusted_proxy_forwarded_addresses_are_used(
    aiohttp_client: Any, log_lines: Any
) -> None:
    client = await aiohttp_client(
        app_for(
            {"server": {"trusted_proxies": ["127.0.0.0/8"]}, "limits": {"per_ip": ["2/minute"]}}
        )
    )
    for i in range(6):  # three addresses, two requests each: none refused
        headers = {"X-Forwarded-For": f"192.0.2.{i // 2}, 127.0.0.5"}
        assert (await client.get("/v1/datasets", headers=headers)).status == 401
    forwarded = {"Forwarded": 'for="[2001:db8::1]";proto=https'}
    assert (await client.get("/v1/datasets", headers=forwarded)).status == 401
    lines = [json.loads(line) for line in log_lines() if '"request"' in line]
    assert {line["client_ip"] for line in lines} >= {"192.0.2.0", "192.0.2.2", "2001:db8::1"}


async def test_authenticated_traffic_has_its_own_per_ip_ceiling(aiohttp_client: Any) -> None:
    client = await aiohttp_client(
        app_for({"limits": {"per_ip": ["1/minute"], "per_ip_authenticated": ["4/minute"]}})
    )
    statuses = [(await client.get("/test/big", headers=bearer(USER_KEY))).status for _ in range(5)]
    assert statuses == [200] * 4 + [429]


# --- compression ----------------------------------------------------------------------


async def test_gzip_and_brotli_decode_to_the_same_json(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for())
    plain = await client.get(
        "/test/big", headers=bearer(USER_KEY, **{"Accept-Encoding": "identity"})
    )
    expected = await plain.json()
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"
    for accept, coding, decode in (
        ("gzip", "gzip", gzip.decompress),
        ("gzip;q=0.5, br", "br", brotli.decompress),
        ("br;q=0, gzip", "gzip", gzip.decompress),
    ):
        response = await client.get(
            "/test/big",
            headers=bearer(USER_KEY, **{"Accept-Encoding": accept}),
            auto_decompress=False,
        )
        assert response.headers["Content-Encoding"] == coding, accept
        raw = await response.read()
        assert len(raw) < int(plain.headers["Content-Length"]) / 3
        assert json.loads(decode(raw)) == expected


async def test_small_bodies_streams_and_disabled_compression_stay_plain(
    aiohttp_client: Any,
) -> None:
    client = await aiohttp_client(app_for())
    gz = {"Accept-Encoding": "gzip, br"}
    small = await client.get("/health/live", headers=gz, auto_decompress=False)
    assert "Content-Encoding" not in small.headers
    sse = await client.get("/test/stream", headers=bearer(USER_KEY, **gz), auto_decompress=False)
    assert "Content-Encoding" not in sse.headers
    assert (await sse.read()).startswith(b"data: {")
    client = await aiohttp_client(app_for({"server": {"compression": False}}))
    response = await client.get("/test/big", headers=bearer(USER_KEY, **gz), auto_decompress=False)
    assert "Content-Encoding" not in response.headers


# --- timing and the slow-request log ------------------------------------------------------


async def test_server_timing_is_on_every_answer(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_for())
    for path, headers in (
        ("/health/live", {}),
        ("/v1/datasets", {}),
        ("/test/slow?s=0.05", bearer(USER_KEY)),
    ):
        response = await client.get(path, headers=headers)
        timing = dict(
            (part.split(";dur=")[0].strip(), float(part.split(";dur=")[1]))
            for part in response.headers["Server-Timing"].split(",")
        )
        assert 0 <= timing["upstream"] and timing["total"] >= 0
        assert float(response.headers["X-Process-Time"]) == pytest.approx(
            timing["total"] / 1000, abs=0.01
        )
    assert 50 <= timing["total"] < 2000 and timing["upstream"] == 250.0


async def test_a_slow_request_logs_exactly_one_slow_line(
    aiohttp_client: Any, log_lines: Any
) -> None:
    client = await aiohttp_client(app_for({"server": {"slow_request_s": 0.2}}))
    await client.get("/test/slow?s=0.01", headers=bearer(USER_KEY))
    response = await client.get("/test/slow?s=0.3", headers=bearer(USER_KEY))
    slow_lines = [json.loads(line) for line in log_lines() if '"slow request"' in line]
    assert len(slow_lines) == 1
    line = slow_lines[0]
    assert line["route"] == "/test/slow" and line["upstream_ms"] == 250.0
    assert line["request_id"] == response.headers["X-Request-ID"]


# --- error tracking ---------------------------------------------------------------------


async def test_unexpected_errors_reach_sentry_scrubbed(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    received: list[bytes] = []

    async def ingest(request: web.Request) -> web.Response:
        received.append(await request.read())  # aiohttp undoes the transfer coding
        return web.json_response({"id": "0" * 32})

    sentry = web.Application()
    sentry.router.add_post("/api/1/envelope/", ingest)
    sentry.router.add_post("/api/1/store/", ingest)
    fake = await aiohttp_server(sentry)
    app = app_for({"server": {"sentry_dsn": f"http://publickey@127.0.0.1:{fake.port}/1"}})
    client = await aiohttp_client(app)
    response = await client.post("/test/explode", json={"prompt": PROMPT}, headers=bearer(USER_KEY))
    assert response.status == 500
    request_id = response.headers["X-Request-ID"]
    await asyncio.to_thread(app[error_tracker_key].flush, 5.0)
    events = b"\n".join(received).decode()
    assert request_id in events and "RuntimeError" in events
    assert '"key_id"' in events and "app-1" in events
    assert USER_KEY not in events and PROMPT not in events


# --- request hygiene --------------------------------------------------------------------


async def test_oversized_urls_and_headers_are_refused_not_500(unused_tcp_port: int) -> None:
    config: Config = make_config(
        {"server": {"port": unused_tcp_port, "max_url_bytes": 1024, "max_header_bytes": 1024}}
    )
    ready = asyncio.Event()
    server = asyncio.ensure_future(serve(config, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with aiohttp.ClientSession() as session:
            long_url = await session.get(f"{url}/v1/models?q={'a' * 2000}")
            assert long_url.status in (400, 414)
            big_header = await session.get(f"{url}/v1/models", headers={"X-Big": "b" * 4000})
            assert big_header.status in (400, 431)
            many = await session.get(
                f"{url}/v1/models", headers={f"X-H{i}": "1" for i in range(150)}
            )
            assert many.status in (400, 431)
            assert (await session.get(f"{url}/health/live")).status == 200
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(server, 10)


async def test_trickled_headers_are_cut_with_408_while_slow_bodies_are_not(
    unused_tcp_port: int,
) -> None:
    config: Config = make_config({"server": {"port": unused_tcp_port, "header_timeout_s": 0.4}})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await request.read())})

    def factory(config: Config) -> web.Application:
        app = app_for()
        app[route_specs_key][app.router.add_route("POST", "/test/echo", echo)] = RouteSpec(
            "query", None
        )
        return app

    ready = asyncio.Event()
    server = asyncio.ensure_future(
        serve(config, on_ready=lambda _: ready.set(), app_factory=factory)
    )
    await asyncio.wait_for(ready.wait(), 10)
    loop = asyncio.get_running_loop()
    try:
        # A slow-loris client: a header line every 0.1 s, never the blank line.
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        started = loop.time()
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        reading = asyncio.ensure_future(reader.read())
        for index in range(30):
            await asyncio.sleep(0.1)
            if reading.done():
                break
            try:
                writer.write(f"X-Slow-{index}: 1\r\n".encode())
                await writer.drain()
            except ConnectionError:
                break
        answer = await asyncio.wait_for(reading, 5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 0.35 <= loop.time() - started < 2.0
        writer.close()

        # A connection that sends nothing at all is cut the same way.
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 408 ")
        writer.close()

        # Headers on time, then a body trickled for longer than the deadline: served.
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(
            b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
        )
        for _ in range(8):
            await asyncio.sleep(0.1)
            writer.write(b"x")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"bytes": 8}')
        writer.close()

        # Ordinary clients, kept-alive connections included, are unaffected.
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                response = await session.get(f"http://127.0.0.1:{unused_tcp_port}/health/live")
                assert response.status == 200
                await asyncio.sleep(0.25)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(server, 10)


async def test_compression_thresholds_are_configurable(aiohttp_client: Any) -> None:
    gz = bearer(USER_KEY, **{"Accept-Encoding": "gzip"})
    # Every body on a worker thread: the answer still decodes to the same JSON.
    client = await aiohttp_client(app_for({"server": {"compression_offload_bytes": 1}}))
    offloaded = await client.get("/test/big", headers=gz, auto_decompress=False)
    assert offloaded.headers["Content-Encoding"] == "gzip"
    expected = await (await client.get("/test/big", headers=bearer(USER_KEY))).json()
    assert json.loads(gzip.decompress(await offloaded.read())) == expected
    # A threshold above the body's size leaves it plain.
    client = await aiohttp_client(app_for({"server": {"compression_min_bytes": 10_000_000}}))
    plain = await client.get("/test/big", headers=gz, auto_decompress=False)
    assert "Content-Encoding" not in plain.headers
    assert json.loads(await plain.read()) == expected


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"header_timeout_s": -1}, "server.header_timeout_s: must be at least 0"),
        ({"compression_min_bytes": "1k"}, 'server.compression_min_bytes: expected a whole'),
        ({"compression_offload_bytes": -5}, "server.compression_offload_bytes: must be at"),
        ({"slow_request_s": "slow"}, 'server.slow_request_s: expected a number'),
        ({"max_url_bytes": 10}, "server.max_url_bytes: must be at least 256"),
        ({"max_headers": 2}, "server.max_headers: must be at least 8"),
    ],
)  # fmt: skip
def test_front_door_settings_are_validated(server: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config({"server": server})
    assert str(raised.value).startswith(message)


def test_per_ip_rates_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"^limits\.per_ip\[0\]: unknown time unit"):
        make_config({"limits": {"per_ip": ["5/fortnight"]}})


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("198.51.100.1", {"X-Forwarded-For": "192.0.2.1"}, "198.51.100.1"),  # untrusted peer
        ("10.0.0.2", {"X-Forwarded-For": "192.0.2.1, 203.0.113.4, 10.0.0.9"}, "203.0.113.4"),
        ("10.0.0.2", {"X-Forwarded-For": "192.0.2.1:4711"}, "192.0.2.1"),
        ("10.0.0.2", {"X-Forwarded-For": "[2001:db8::1]:4711"}, "2001:db8::1"),
        ("10.0.0.2", {"Forwarded": 'for=192.0.2.60:8080;proto=http, for="[2001:db8::7]"'},
         "2001:db8::7"),
        ("10.0.0.2", {"X-Forwarded-For": "192.0.2.1, unknown"}, "10.0.0.2"),  # garbage hop
        ("10.0.0.2", {"X-Forwarded-For": "10.0.0.3, 10.0.0.4"}, "10.0.0.3"),  # all trusted
        ("::ffff:10.0.0.2", {"X-Forwarded-For": "192.0.2.8"}, "192.0.2.8"),  # mapped peer
        ("10.0.0.2", {}, "10.0.0.2"),
    ],
)  # fmt: skip
def test_client_ip_takes_the_rightmost_untrusted_hop(
    peer: str, headers: dict[str, str], expected: str
) -> None:
    request = make_mocked_request("GET", "/", headers=headers)
    request = request.clone(remote=peer)
    assert client_ip(request, TrustedProxies(["10.0.0.0/8"])) == expected


async def test_per_ip_limits_are_shared_across_replicas_through_redis(
    aiohttp_client: Any, redis_prefix: str
) -> None:
    shared = {
        "redis": REDIS_URL,
        "redis_prefix": redis_prefix,
        "server": {"trusted_proxies": ["127.0.0.1"]},
        "limits": {"per_ip": ["4/minute"]},
    }
    first = await aiohttp_client(app_for(shared))
    second = await aiohttp_client(app_for(shared))
    attacker = bearer(BAD_KEY, **{"X-Forwarded-For": "198.51.100.77"})
    statuses = [(await first.get("/test/big", headers=attacker)).status for _ in range(4)]
    assert statuses == [401] * 4
    # The other replica knows the address has spent its allowance.
    refused = await second.get("/test/big", headers=attacker)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    other = bearer(USER_KEY, **{"X-Forwarded-For": "203.0.113.77"})
    assert (await second.get("/test/big", headers=other)).status == 200
