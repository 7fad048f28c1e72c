"""Streams never lie: failures after the first byte end in-band, never as a silent close,
and a client that hangs up stops the upstream."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import USER_KEY
from tests.fake_providers import FakeProvider
from tests.llm_support import HI, Tollway, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture


async def _stream_error(client: TestClient, model: str = "solo") -> tuple[str, openai.APIError]:
    stream = await sdk(client).chat.completions.create(model=model, messages=HI, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
    return text, raised.value


@pytest.mark.parametrize("mode", ["cut", "stall", "clean-cut"])
async def test_a_stream_failing_after_the_first_byte_is_finished_by_a_new_call(
    tollway: Tollway, fake: FakeProvider, mode: str
) -> None:
    client = await tollway()
    fake.hang_s = 5
    fake.script("chat", mode)  # then the model answers again, from the start
    started = time.monotonic()
    stream = await sdk(client).chat.completions.create(model="solo", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert time.monotonic() - started < 3  # the stall is cut at the idle timeout
    assert fake.hits("chat") == 2  # solo has no fallback: the same model, regenerated


@pytest.mark.parametrize("mode", ["cut", "stall", "clean-cut"])
async def test_a_stream_that_cannot_be_continued_ends_with_an_error_event(
    tollway: Tollway, fake: FakeProvider, mode: str
) -> None:
    client = await tollway()
    fake.hang_s = 5
    fake.script("chat", mode, *["diverge"] * 4)  # every new call answers something else
    text, error = await _stream_error(client)
    assert text in ("Hel", "Hello")
    assert error.message
    assert 2 <= fake.hits("chat") <= 5  # tried, boundedly


async def test_a_stream_that_finished_without_done_is_closed_properly(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "no-done")
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "solo", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    body = await response.read()
    assert response.headers["X-Accel-Buffering"] == "no"
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in body and b'"choices":[]' not in body


@pytest.mark.parametrize("drain_s", [0.1, 1.5])
async def test_an_upstream_that_lingers_after_done_is_closed_after_the_drain_time(
    tollway: Tollway, fake: FakeProvider, drain_s: float
) -> None:
    # (the drain also ends at the idle timeout: keep that out of the way)
    client = await tollway({"backends": {"openai": {"done_drain_s": drain_s, "idle_timeout_s": 5}}})
    fake.script("chat", "linger")
    started = time.monotonic()
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "solo", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert (await response.read()).endswith(b"data: [DONE]\n\n")
    assert time.monotonic() - started < 1  # the client does not wait for the drain
    if drain_s < 1:
        await asyncio.wait_for(fake.disconnected.wait(), 1)  # Tollway hung up
    else:
        await asyncio.sleep(0.7)
        assert not fake.disconnected.is_set()  # still draining: the option is honoured
        await asyncio.wait_for(fake.disconnected.wait(), 2)


async def test_a_slow_first_token_falls_over_before_any_byte(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "slow-first")
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        },
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert response.headers["X-Tollway-Model"] == "llama-3.1-8b-instant"
    assert (await response.read()).endswith(b"data: [DONE]\n\n")


async def test_a_stream_that_cannot_start_is_an_ordinary_error(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "slow-first")
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "solo", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "upstream_timeout"


async def test_a_client_that_hangs_up_stops_the_upstream_stream(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.stream_gap_s = 0.3
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "solo", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    first = await response.content.readline()
    assert first.startswith(b"data: ")
    response.close()
    await asyncio.wait_for(fake.disconnected.wait(), 2)


async def test_upstream_error_event_is_passed_on(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    fake.script("chat", "error-event")
    text, error = await _stream_error(client)
    assert text == "Hel"
    assert "overloaded" in str(error.body) + error.message
    assert fake.hits("chat") == 1


async def test_events_split_across_reads_with_crlf_and_comments_are_relayed_whole(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "crlf-split")
    stream = await sdk(client).chat.completions.create(model="solo", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_a_stream_ended_for_shutdown_gets_an_error_event_and_a_proper_end(
    tollway: Tollway, fake: FakeProvider
) -> None:
    from gateway.ops.streams import open_streams_key
    from gateway.state.service import state_service_key

    client = await tollway({"backends": {"openai": {"idle_timeout_s": 5}}})
    fake.stream_gap_s = 0.2  # a long answer: still going when the drain ends it
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "solo", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}", "X-Request-ID": "drain-1"},
    )
    first = await response.content.readline()
    assert first.startswith(b"data: {")
    streams = client.app[open_streams_key]
    assert len(streams) == 1
    assert streams.end_all() == 1
    rest = await response.read()  # a proper end: the chunked body completes
    events = [line for line in (first + rest).split(b"\n\n") if line]
    assert b'"code":"server_shutting_down"' in events[-1]
    assert b'"request_id":"drain-1"' in events[-1]
    assert b"[DONE]" not in rest
    service = client.app[state_service_key]
    await service.usage.flush()
    rows = await service.store.fetch(
        "SELECT status, outcome, tokens_out FROM tollway_usage WHERE request_id = ?",
        ("drain-1",),
    )
    # cut by shutdown, with the one content chunk relayed so far as its output tokens
    assert [tuple(r) for r in rows] == [(503, "shutdown", 1)]


async def test_a_stream_past_max_response_bytes_ends_with_an_error_event(
    tollway: Tollway, fake: FakeProvider
) -> None:
    fake.stream_pieces = ["word " * 40] * 30  # ~7 KB of events, one network read each
    fake.stream_gap_s = 0.01
    client = await tollway({"backends": {"openai": {"max_response_bytes": 2000}}})
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "solo", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert response.status == 200
    events = [e for e in (await response.read()).split(b"\n\n") if e]
    assert 1 <= len(events) < 30
    assert b'"code":"response_too_large"' in events[-1]


async def test_a_json_answer_past_max_response_bytes_is_502_without_reading_it_all(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"backends": {"openai": {"max_response_bytes": 1024 * 1024}}})
    fake.script("chat", "huge")
    started = time.monotonic()
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HI},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert response.status == 502
    error = (await response.json())["error"]
    assert error["code"] == "response_too_large" and "max_response_bytes" in error["message"]
    assert response.headers["X-Should-Retry"] == "false"
    assert time.monotonic() - started < 5
    await asyncio.wait_for(fake.disconnected.wait(), 5)
    assert fake.huge_sent < 16 * 1024 * 1024  # the rest of the 100 MB was never read
    assert fake.hits("chat") == 1  # neither retried nor sent to the fallback model
