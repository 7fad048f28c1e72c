"""SIGTERM with streams in flight: each stream ends honestly, usage is recorded exactly
once, and the process is gone within its shutdown timeout plus two seconds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import USER_KEY
from tests.fake_providers import UPSTREAM_KEY, FakeProvider
from tests.gateway_process import GatewayProcess, Zygote

STREAMS = 100
RUNS = 20
AT_ONCE = 4
"""Runs in parallel: each is a gateway process with 100 streams; the machine has 2 cores."""
SHUTDOWN_TIMEOUT_S = 1.0
HEADERS = {"Authorization": f"Bearer {USER_KEY}"}


def gateway_config(fake_url: str, **server: Any) -> dict[str, Any]:
    return {
        "server": {"shutdown_timeout_s": SHUTDOWN_TIMEOUT_S, **server},
        "backends": {
            "openai": {
                "type": "openai", "base_url": f"{fake_url}/v1", "api_key": UPSTREAM_KEY,
                "idle_timeout_s": 5, "retries": 0,
            }
        },
        "models": {"solo": {"backend": "openai"}},
    }  # fmt: skip


@pytest.fixture
def long_streams(fake: FakeProvider) -> FakeProvider:
    """Answers that stream for 4 s: 20 content events, 0.2 s apart."""
    fake.stream_pieces = [f"w{i} " for i in range(20)]
    fake.stream_gap_s = 0.2
    return fake


async def open_stream(
    session: aiohttp.ClientSession, url: str, request_id: str
) -> aiohttp.ClientResponse:
    response = await session.post(
        f"{url}/v1/chat/completions",
        json={"model": "solo", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={**HEADERS, "X-Request-ID": request_id},
    )
    assert response.status == 200, await response.text()
    first = await response.content.readline()
    assert first.startswith(b"data: {")  # streaming: in flight when SIGTERM comes
    return response


async def rest_of(response: aiohttp.ClientResponse) -> list[bytes]:
    """The remaining events; raises if the chunked body does not end properly."""
    body = await response.read()
    return [event for event in body.split(b"\n\n") if event.strip()]


async def drain_once(folder: Path, fake_url: str, run: int, zygote: Zygote) -> None:
    gateway = GatewayProcess(folder, gateway_config(fake_url), zygote=zygote)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            await gateway.start(session)
            ids = [f"run{run}-stream{i}" for i in range(STREAMS)]
            responses = await asyncio.gather(*(open_stream(session, gateway.url, i) for i in ids))
            gateway.terminate()
            endings = await asyncio.gather(*(rest_of(r) for r in responses))
            code, seconds = await gateway.wait(within_s=SHUTDOWN_TIMEOUT_S + 5)
        finally:
            gateway.kill()
    assert code == 0
    assert seconds <= SHUTDOWN_TIMEOUT_S + 2, f"run {run}: exited {seconds:.2f}s after SIGTERM"
    for request_id, events in zip(ids, endings, strict=True):
        last = orjson.loads(events[-1].removeprefix(b"data: "))
        assert last["error"]["code"] == "server_shutting_down", (run, request_id, events[-1])
        assert last["error"]["request_id"] == request_id
        assert b"[DONE]" not in events[-1]
    rows = gateway.usage_rows()
    assert len(rows) == STREAMS, f"run {run}: {len(rows)} usage rows for {STREAMS} streams"
    assert sorted(r[0] for r in rows) == sorted(ids)  # every stream once, no duplicate
    assert {(r[1], r[2]) for r in rows} == {(503, "shutdown")}
    assert all(r[3] >= 1 for r in rows)  # the tokens relayed before the cut


async def test_sigterm_ends_100_streams_honestly_20_times_with_each_usage_row_once(
    long_streams: FakeProvider, tmp_path: Path
) -> None:
    url: str = long_streams.url  # type: ignore[attr-defined]
    gate = asyncio.Semaphore(AT_ONCE)
    started = time.monotonic()

    async with Zygote() as zygote:

        async def run(index: int) -> None:
            async with gate:
                await drain_once(tmp_path / f"run{index}", url, index, zygote)

        await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(RUNS))), 240)
    assert time.monotonic() - started < 240


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive GET on an open connection; its status line and headers."""
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head


async def test_after_sigterm_a_kept_alive_connection_is_answered_then_idle_ones_close_quietly(
    unused_tcp_port: int,
) -> None:
    import os
    import signal

    from gateway.serve import serve
    from tests.conftest import make_config

    config = make_config(
        {"server": {"port": unused_tcp_port, "shutdown_timeout_s": 5, "drain_idle_s": 0.6}}
    )
    ready = asyncio.Event()
    server = asyncio.ensure_future(serve(config, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    used = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
    idle = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
    for reader, writer in (used, idle):
        assert b"connection: close" not in (await _request(reader, writer)).lower()
    stopped = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.3)
    # A request on a connection that was open and idle at SIGTERM is still answered…
    head = await _request(*used)
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    assert await used[0].read() == b""  # …and that connection then ends with a FIN
    with pytest.raises(OSError):  # no new connection is accepted
        await asyncio.open_connection("127.0.0.1", unused_tcp_port)
    # The connection left idle is closed once quiet for drain_idle_s, with a FIN, not a reset.
    assert await asyncio.wait_for(idle[0].read(), 3) == b""
    assert time.monotonic() - stopped >= 0.6
    await asyncio.wait_for(server, 3)  # nothing left: the drain ends before its timeout
    assert time.monotonic() - stopped < 3
    for _, writer in (used, idle):
        writer.close()


async def test_streams_completing_during_the_drain_are_recorded_completed_even_if_clients_leave(
    fake: FakeProvider, tmp_path: Path
) -> None:
    """The client reads to ``[DONE]`` and hangs up while Tollway still drains the upstream
    (which lingers after ``[DONE]``): the record says what the client saw, 200 completed."""
    fake.stream_gap_s = 0.1
    fake.hang_s = 30
    fake.script("chat", *["linger"] * 20)
    url: str = fake.url  # type: ignore[attr-defined]
    config = gateway_config(url, shutdown_timeout_s=5)
    config["backends"]["openai"]["done_drain_s"] = 1.0
    async with Zygote() as zygote, aiohttp.ClientSession() as session:
        gateway = GatewayProcess(tmp_path / "gw", config, zygote=zygote)
        try:
            await gateway.start(session)
            ids = [f"done-{i}" for i in range(20)]
            responses = await asyncio.gather(*(open_stream(session, gateway.url, i) for i in ids))
            gateway.terminate()

            async def read_to_done(response: aiohttp.ClientResponse) -> None:
                async for line in response.content:
                    if line.startswith(b"data: [DONE]"):
                        break
                response.close()  # gone at once, before the upstream has ended

            await asyncio.gather(*(read_to_done(r) for r in responses))
            code, _ = await gateway.wait(within_s=10)
        finally:
            gateway.kill()
    assert code == 0
    rows = gateway.usage_rows()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {(r[1], r[2], r[3]) for r in rows} == {(200, "completed", 3)}


async def test_streams_are_ended_at_their_share_of_the_shutdown_timeout(
    long_streams: FakeProvider, unused_tcp_port: int
) -> None:
    import os
    import signal

    from gateway.serve import serve
    from tests.conftest import make_config

    url: str = long_streams.url  # type: ignore[attr-defined]
    config = make_config(
        gateway_config(url, port=unused_tcp_port, shutdown_timeout_s=4, stream_drain_share=0.25)
    )
    ready = asyncio.Event()
    server = asyncio.ensure_future(serve(config, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    async with aiohttp.ClientSession() as session:
        response = await open_stream(session, f"http://127.0.0.1:{unused_tcp_port}", "share-1")
        stopped = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        events = await rest_of(response)
        ended_after = time.monotonic() - stopped
    assert b"server_shutting_down" in events[-1]
    assert 0.9 <= ended_after < 2.0  # a quarter of 4 s, not the whole timeout
    await asyncio.wait_for(server, 5)
