"""The lean upstream HTTP client against real servers on 127.0.0.1: aiohttp's, and raw
asyncio ones for what a well-behaved server never does."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from backends.http_client import ConnectFailed, Disconnected, Pool

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[TestServer]]]:
    servers: list[TestServer] = []

    async def start(handler: Handler, **kwargs: Any) -> TestServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1", **kwargs)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def raw_server(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(script, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


async def test_a_json_post_is_answered_and_the_connection_reused(serve: Any) -> None:
    peers: set[Any] = set()

    async def echo(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        body = await request.read()
        headers = request.headers
        return web.json_response(
            {"path": request.path, "body": body.decode(), "id": headers["X-Request-ID"],
             "auth": headers["Authorization"], "encoding": headers["Accept-Encoding"]}
        )  # fmt: skip

    server = await serve(echo)
    pool = Pool(str(server.make_url("/v1")), headers=[("Authorization", "Bearer sk")])
    try:
        for n in range(3):
            async with await pool.request(
                "POST", "/chat/completions", b'{"n": %d}' % n, [("X-Request-ID", f"r{n}")]
            ) as answer:
                assert answer.status == 200
                assert answer.headers["content-type"].startswith("application/json")
                assert orjson.loads(await answer.read()) == {
                    "path": "/v1/chat/completions",
                    "body": f'{{"n": {n}}}',
                    "id": f"r{n}",
                    "auth": "Bearer sk",
                    "encoding": "identity",
                }
        assert len(peers) == 1  # one keep-alive connection served all three
    finally:
        await pool.close()


async def test_a_chunked_stream_arrives_piece_by_piece(serve: Any) -> None:
    release = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await release.wait()
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    server = await serve(sse)
    pool = Pool(str(server.make_url("")))
    try:
        async with await pool.request("POST", "/s", b"{}") as answer:
            chunks = answer.chunks()
            assert await anext(chunks) == b"data: one\n\n"  # before the rest exists
            release.set()
            rest = b"".join([chunk async for chunk in chunks])
            assert rest == b"data: two\n\n"
            assert answer.complete
    finally:
        await pool.close()


async def test_a_silent_upstream_raises_after_the_idle_timeout(serve: Any) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"x")
        await asyncio.sleep(5)
        return response

    server = await serve(stall)
    pool = Pool(str(server.make_url("")))
    try:
        loop = asyncio.get_running_loop()
        async with await pool.request("GET", "/", idle_timeout_s=0.2) as answer:
            chunks = answer.chunks()
            assert await anext(chunks) == b"x"
            started = loop.time()
            with pytest.raises(TimeoutError):
                await anext(chunks)
            assert 0.15 < loop.time() - started < 1.0
    finally:
        await pool.close()


async def test_a_refused_connection_is_a_connect_failure() -> None:
    server, port = await raw_server(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    pool = Pool(f"http://127.0.0.1:{port}", connect_timeout_s=1)
    with pytest.raises(ConnectFailed):
        await pool.request("GET", "/")
    await pool.close()


async def test_a_connection_cut_mid_answer_is_a_disconnect() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    server, port = await raw_server(cut)
    pool = Pool(f"http://127.0.0.1:{port}")
    try:
        async with await pool.request("POST", "/", b"{}") as answer:
            with pytest.raises(Disconnected):
                await answer.read()
    finally:
        await pool.close()
        server.close()


async def test_a_body_that_ends_with_the_connection_is_read_whole() -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    server, port = await raw_server(close_delimited)
    pool = Pool(f"http://127.0.0.1:{port}")
    try:
        async with await pool.request("GET", "/") as answer:
            assert await answer.read() == b"all of it"
    finally:
        await pool.close()
        server.close()


async def test_garbage_instead_of_http_is_a_disconnect() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    server, port = await raw_server(garbage)
    pool = Pool(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(Disconnected):
            await pool.request("GET", "/")
    finally:
        await pool.close()
        server.close()


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    connections = 0

    async def close_after_answering(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive was promised; the server closes while the client idles

    server, port = await raw_server(close_after_answering)
    pool = Pool(f"http://127.0.0.1:{port}")
    try:
        for _ in range(3):
            async with await pool.request("POST", "/", b"{}") as answer:
                assert await answer.read() == b"ok"
            await asyncio.sleep(0.05)  # the close reaches the client
        assert connections == 3
    finally:
        await pool.close()
        server.close()


async def test_a_reset_after_the_request_is_an_error_not_a_silent_resend() -> None:
    requests = 0

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await _read_request(reader)
        requests += 1
        writer.transport.abort()

    server, port = await raw_server(reset)
    pool = Pool(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(Disconnected):
            await pool.request("POST", "/", b"{}")
        assert requests == 1
    finally:
        await pool.close()
        server.close()


async def test_requests_past_the_pool_size_wait_for_a_free_connection(serve: Any) -> None:
    in_flight = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="ok")

    server = await serve(slow)
    pool = Pool(str(server.make_url("")), max_connections=2)

    async def one() -> bytes:
        async with await pool.request("GET", "/") as answer:
            return await answer.read()

    try:
        assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
        assert most == 2
    finally:
        await pool.close()


async def test_an_unread_answer_does_not_return_its_connection(serve: Any) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1_000_000)

    server = await serve(big)
    pool = Pool(str(server.make_url("")), max_connections=1)
    try:
        async with await pool.request("GET", "/") as answer:
            assert answer.status == 200  # left without reading the body
        async with await pool.request("GET", "/") as answer:
            assert len(await answer.read()) == 1_000_000  # a fresh connection, a whole body
    finally:
        await pool.close()


async def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte(serve: Any) -> None:
    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"y" * 65536)
        await response.write_eof()
        return response

    server = await serve(flood)
    pool = Pool(str(server.make_url("")))
    try:
        total = 0
        async with await pool.request("GET", "/") as answer:
            async for chunk in answer.chunks():
                total += len(chunk)
                assert answer._buffered <= 2 * 1024 * 1024  # bounded while we dawdle
                await asyncio.sleep(0.001)
        assert total == 64 * 65536
    finally:
        await pool.close()


async def test_https_with_sni_and_a_verified_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    client_ctx = ssl.create_default_context(cafile=cert)
    pool = Pool(f"https://localhost:{port}", ssl_context=client_ctx)
    try:
        async with await pool.request("GET", "/") as answer:
            assert await answer.read() == b"secret"
        untrusting = Pool(f"https://localhost:{port}", ssl_context=ssl.create_default_context())
        with pytest.raises(ConnectFailed):
            await untrusting.request("GET", "/")
        await untrusting.close()
    finally:
        await pool.close()
        await runner.cleanup()


def _self_signed(folder: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_the_first_byte_may_take_longer_than_the_gaps_after_it(serve: Any) -> None:
    async def slow_start(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.sleep(0.3)  # longer than the later gaps may be
        await response.write(b"first")
        await asyncio.sleep(0.3)
        await response.write(b"late")
        return response

    server = await serve(slow_start)
    pool = Pool(str(server.make_url("")))
    try:
        async with await pool.request(
            "GET", "/", idle_timeout_s=0.5, idle_after_first_s=0.15
        ) as answer:
            chunks = answer.chunks()
            assert await anext(chunks) == b"first"
            with pytest.raises(TimeoutError):
                await anext(chunks)
    finally:
        await pool.close()


def test_the_pool_works_on_uvloop_as_tollway_serves() -> None:
    import uvloop

    async def exchange() -> list[bytes]:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(body=await request.read())

        server = TestServer(_app(hello), host="127.0.0.1")
        await server.start_server()
        pool = Pool(str(server.make_url("")))
        try:
            bodies = []
            for n in range(3):
                async with await pool.request("POST", "/", b"%d" % n) as answer:
                    bodies.append(await answer.read())
            return bodies
        finally:
            await pool.close()
            await server.close()

    assert uvloop.run(exchange()) == [b"0", b"1", b"2"]


def _app(handler: Handler) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
