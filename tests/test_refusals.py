"""Requests the HTTP parser refuses: the JSON error shape with a request id, nothing of
the request echoed, one WARNING line each (rate-limited per address), counted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from gateway.serve import serve
from tests.conftest import log_lines as log_lines  # noqa: F401 - a fixture
from tests.conftest import make_config

HOSTILE: dict[str, tuple[bytes, int]] = {
    "nul_in_header": (b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-A: a\x00ECHO\r\n\r\n", 400),
    "negative_length": (
        b"POST /v1/query HTTP/1.1\r\nHost: t\r\nContent-Length: -5ECHO\r\n\r\n",
        400,
    ),
    "duplicate_length": (
        b"POST /v1/query HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"
        b"ECHO!",
        400,
    ),
    "header_64k": (b"GET / HTTP/1.1\r\nHost: t\r\nX-B: ECHO" + b"a" * 65536 + b"\r\n\r\n", 431),
    "headers_200": (
        b"GET / HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-ECHO%d: v\r\n" % i for i in range(200))
        + b"\r\n",
        431,
    ),
    "line_100k": (b"GET /ECHO" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "bad_chunk_size": (
        b"POST /v1/query HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nECHO\r\nx\r\n",
        400,
    ),
    "http_9_9": (b"GET /ECHO HTTP/9.9\r\nHost: t\r\n\r\n", 505),
    "tls_hello": (bytes.fromhex("16030100f4010000f00303") + b"ECHO" + b"\x00" * 64, 400),
    "bad_method": (b"G<ECHO> / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "bad_header_name": (b"GET / HTTP/1.1\r\nHost: t\r\nX-<ECHO>: 1\r\n\r\n", 400),
}


@pytest.fixture
async def served(unused_tcp_port: int) -> AsyncIterator[Callable[[bytes], Any]]:
    """Tollway on a port; the fixture value sends raw bytes and returns (status, headers,
    body) of the answer."""
    config = make_config({"server": {"port": unused_tcp_port, "refusal_logs_per_minute": 5}})
    ready = asyncio.Event()
    server = asyncio.ensure_future(serve(config, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)

    async def send(raw: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # the connection is closed after
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body

    try:
        yield send
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(server, 10)


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_request_the_parser_refuses_gets_the_error_shape_and_no_echo(
    served: Callable[[bytes], Any], case: str
) -> None:
    raw, status = HOSTILE[case]
    got, headers, body = await served(raw)
    assert got == status
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "param", "request_id"}
    assert error["request_id"] == headers["x-request-id"] and len(error["request_id"]) == 32
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    assert b"ECHO" not in body and "ECHO" not in json.dumps(headers)


async def test_parser_refusals_log_one_warning_each_rate_limited_per_address_and_are_counted(
    served: Callable[[bytes], Any], log_lines: Callable[[], list[str]]
) -> None:
    for _ in range(8):
        await served(HOSTILE["nul_in_header"][0])
    await served(HOSTILE["http_9_9"][0])
    records = [json.loads(line) for line in log_lines()]
    refused = [r for r in records if r.get("message") == "request refused by the HTTP parser"]
    assert len(refused) == 5  # refusal_logs_per_minute: 5 for this address, then quiet
    assert {r["level"] for r in refused} == {"WARNING"}
    assert all("exc_info" not in r and "ECHO" not in json.dumps(r) for r in refused)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    assert not any("Traceback" in line for line in log_lines())
    status, _, metrics = await served(b"GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n")
    assert status == 200
    text = metrics.decode()
    assert 'tollway_http_refusals_total{code="invalid_header"} 8.0' in text
    assert 'tollway_http_refusals_total{code="http_version_not_supported"} 1.0' in text


async def test_a_bad_chunk_after_the_headers_is_a_prompt_400_not_a_hung_connection(
    unused_tcp_port: int, log_lines: Callable[[], list[str]]
) -> None:
    from tests.conftest import USER_KEY

    config = make_config({"server": {"port": unused_tcp_port}})
    ready = asyncio.Event()
    server = asyncio.ensure_future(serve(config, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
        writer.write(
            b"POST /v1/query HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + USER_KEY.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body when the bad chunk comes
        writer.write(b"zz\r\nECHO\r\n0\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 3)  # answered, then closed
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"connection: close" in head.lower()
        assert orjson.loads(body)["error"]["code"] == "invalid_body_framing"
        assert b"ECHO" not in answer
        records = [json.loads(line) for line in log_lines()]
        assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(server, 10)
