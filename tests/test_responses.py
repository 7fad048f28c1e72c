"""The Responses API through the real openai SDK: JSON and the event stream, honest ends,
usage with its cached and reasoning parts, routing by the APIs a backend serves."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from gateway.config.keyhash import hash_key
from tests.conftest import USER_KEY, base_config_data
from tests.fake_openai_surface import RESPONSE_DELTAS, RESPONSE_TEXT
from tests.fake_providers import FakeProvider
from tests.llm_support import Tollway, metrics_text, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture
from tests.surface_support import usage_row

AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def with_id(request_id: str) -> dict[str, Any]:
    return {"extra_headers": {"X-Request-ID": request_id}}


async def test_a_response_through_the_sdk_answers_and_records_its_usage(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    response = await sdk(client).responses.create(
        model="gpt-4o-mini", input="Say hello", **with_id("resp-json-1")
    )
    assert response.output_text == RESPONSE_TEXT
    assert response.usage is not None and response.usage.input_tokens == 11
    assert fake.seen[-1].path == "/v1/responses" and fake.seen[-1].body["input"] == "Say hello"
    row = await usage_row(client, "resp-json-1")
    assert row["route_class"] == "responses" and row["model"] == "gpt-4o-mini"
    assert (row["tokens_in"], row["tokens_out"]) == (11, 9)
    assert (row["tokens_cached"], row["tokens_reasoning"]) == (4, 3)


async def test_a_streamed_response_reassembles_to_the_answer_and_records_its_usage(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    stream = await sdk(client).responses.create(
        model="gpt-4o-mini", input="Say hello", stream=True, **with_id("resp-stream-1")
    )
    deltas, kinds = [], []
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
    assert "".join(deltas) == RESPONSE_TEXT and deltas == RESPONSE_DELTAS
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    row = await usage_row(client, "resp-stream-1")
    assert (row["tokens_in"], row["tokens_out"], row["tokens_cached"], row["tokens_reasoning"]) == (
        11, 9, 4, 3,
    )  # fmt: skip
    assert row["status"] == 200


async def test_the_sdk_stream_helper_gets_the_final_response(tollway: Tollway) -> None:
    client = await tollway()
    async with sdk(client).responses.stream(model="gpt-4o-mini", input="Say hello") as stream:
        final = await stream.get_final_response()
    assert final.output_text == RESPONSE_TEXT
    assert final.usage is not None and final.usage.output_tokens == 9


async def test_a_responses_stream_keeps_event_lines_and_sends_no_done(tollway: Tollway) -> None:
    client = await tollway()
    response = await client.post(
        "/v1/responses", json={"model": "gpt-4o-mini", "input": "x", "stream": True}, headers=AUTH
    )
    body = await response.read()
    assert response.headers["Content-Type"] == "text/event-stream"
    events = [block for block in body.split(b"\n\n") if block]
    assert events[0].startswith(b"event: response.created\ndata: {")
    assert events[-1].startswith(b"event: response.completed\n")
    assert b"[DONE]" not in body


@pytest.mark.parametrize("mode", ["cut", "stall", "malformed", "clean-cut"])
async def test_a_responses_stream_failing_midway_raises_in_the_sdk(
    tollway: Tollway, fake: FakeProvider, mode: str
) -> None:
    client = await tollway()
    fake.hang_s = 5
    fake.script("responses", mode)
    started = time.monotonic()
    stream = await sdk(client).responses.create(
        model="solo", input="x", stream=True, **with_id(f"cut-{mode}")
    )
    text = ""
    with pytest.raises(openai.APIError) as raised:
        async for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
    assert text == "".join(RESPONSE_DELTAS[:3])
    assert raised.value.code in ("backend_unavailable", "upstream_timeout", "malformed_event")
    assert time.monotonic() - started < 3  # a stall ends at the idle timeout
    assert fake.hits("responses") == 1  # bytes reached the client: no retry
    row = await usage_row(client, f"cut-{mode}")
    assert row["status"] == 502


async def test_the_stream_helper_raises_on_a_cut_stream_too(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("responses", "cut")
    with pytest.raises(openai.APIError):
        async with sdk(client).responses.stream(model="solo", input="x") as stream:
            await stream.get_final_response()


async def test_the_in_band_error_event_has_the_flat_and_the_nested_fields(
    tollway: Tollway, fake: FakeProvider
) -> None:
    import orjson

    client = await tollway()
    fake.script("responses", "cut")
    response = await client.post(
        "/v1/responses",
        json={"model": "solo", "input": "x", "stream": True},
        headers={**AUTH, "X-Request-ID": "cut-shape"},
    )
    events = [block for block in (await response.read()).split(b"\n\n") if block]
    error_event, failed_event = events[-2], events[-1]
    assert error_event.startswith(b"event: error\ndata: ")
    error = orjson.loads(error_event.split(b"data: ", 1)[1])
    before = orjson.loads(events[-3].split(b"data: ", 1)[1])
    assert error["sequence_number"] == before["sequence_number"] + 1
    assert error["code"] == error["error"]["code"] == "backend_unavailable"
    assert error["message"] == error["error"]["message"]
    assert error["error"]["request_id"] == "cut-shape"
    failed = orjson.loads(failed_event.split(b"data: ", 1)[1])
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"


async def test_an_upstream_error_event_is_relayed_as_it_came(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("responses", "error-event")
    stream = await sdk(client).responses.create(model="solo", input="x", stream=True)
    with pytest.raises(openai.APIError) as raised:
        async for _ in stream:
            pass
    assert raised.value.message == "overloaded"


async def test_a_responses_stream_ended_by_shutdown_gets_the_error_event(
    tollway: Tollway, fake: FakeProvider
) -> None:
    import asyncio

    from gateway.ops.streams import open_streams_key

    client = await tollway({"backends": {"openai": {"idle_timeout_s": 5}}})
    fake.hang_s = 3
    fake.script("responses", "stall")
    response = await client.post(
        "/v1/responses",
        json={"model": "solo", "input": "x", "stream": True},
        headers={**AUTH, "X-Request-ID": "resp-shutdown"},
    )
    await response.content.readline()
    streams = client.app[open_streams_key]
    for _ in range(50):
        if len(streams):
            break
        await asyncio.sleep(0.01)
    assert streams.end_all() == 1
    body = await response.read()
    assert b'"code":"server_shutting_down"' in body
    assert (await usage_row(client, "resp-shutdown"))["status"] == 503


async def test_a_streamed_response_falls_back_when_its_primary_fails(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"backends": {"groq": {"apis": ["chat", "responses"]}}})
    fake.script("responses", "500", "500", "500")  # the primary fails, retries included
    stream = await sdk(client).responses.create(model="gpt-4o-mini", input="x", stream=True)
    text = ""
    async for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text
    assert any(s.path == "/openai/v1/responses" for s in fake.seen)
    fallbacks = [
        line for line in (await metrics_text(client)).splitlines()
        if line.startswith("tollway_fallbacks_total{")
    ]  # fmt: skip
    assert len(fallbacks) == 1 and 'fallback="llama-3.1-8b-instant"' in fallbacks[0]
    assert fallbacks[0].endswith(" 1.0")


async def test_responses_fall_back_only_to_backends_serving_the_responses_api(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"backends": {"groq": {"apis": ["chat"]}}})
    fake.script("responses", "500", "500", "500")  # the primary fails, retries included
    response = await client.post(
        "/v1/responses", json={"model": "gpt-4o-mini", "input": "x"}, headers=AUTH
    )
    assert response.status == 500
    assert not any(s.path.startswith("/openai/v1/responses") for s in fake.seen)

    served = await tollway({"backends": {"groq": {"apis": ["chat", "responses"]}}})
    fake.script("responses", "500", "500", "500")
    response = await served.post(
        "/v1/responses", json={"model": "gpt-4o-mini", "input": "x"}, headers=AUTH
    )
    assert response.status == 200
    assert response.headers["X-Tollway-Model"] == "llama-3.1-8b-instant"


async def test_a_model_whose_backend_lacks_the_responses_api_is_a_clear_400(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"backends": {"groq": {"apis": ["chat", "audio"]}}})
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(client).responses.create(model="llama-3.1-8b-instant", input="x")
    assert raised.value.code == "unsupported_api"
    assert "responses" in raised.value.message
    assert fake.hits("responses") == 0


async def test_responses_are_also_served_at_the_groq_path(tollway: Tollway) -> None:
    client = await tollway()
    groq_style = openai.AsyncOpenAI(
        base_url=str(client.make_url("/openai/v1")), api_key=USER_KEY, max_retries=0
    )
    response = await groq_style.responses.create(model="llama-3.1-8b-instant", input="x")
    assert response.output_text == RESPONSE_TEXT


BUDGET_KEY = "tw_budget-key-0123456789abcdefghijk"


async def test_responses_count_against_the_key_token_budget(tollway: Tollway) -> None:
    budgeted = {"id": "budgeted", "hash": hash_key(BUDGET_KEY), "tenant": "acme",
                "scopes": ["llm"], "budget": {"tokens": ["15/day"]}}  # fmt: skip
    client = await tollway({"keys": [*base_config_data()["keys"], budgeted]})
    headers = {"Authorization": f"Bearer {BUDGET_KEY}"}
    body = {"model": "solo", "input": "x"}
    first = await client.post("/v1/responses", json=body, headers=headers)
    assert first.status == 200  # 20 tokens: the budget is spent, past its limit
    second = await client.post("/v1/responses", json=body, headers=headers)
    assert second.status == 429
    assert (await second.json())["error"]["code"] == "budget_exceeded"


async def test_responses_have_their_own_route_class_limit(tollway: Tollway) -> None:
    client = await tollway({"limits": {"routes": {"responses": ["2/minute"]}}})
    body = {"model": "solo", "input": "x"}
    statuses = [(await client.post("/v1/responses", json=body, headers=AUTH)).status
                for _ in range(3)]  # fmt: skip
    assert statuses == [200, 200, 429]
    chat = {"model": "solo", "messages": [{"role": "user", "content": "x"}]}
    assert (await client.post("/v1/chat/completions", json=chat, headers=AUTH)).status == 200


async def test_a_key_limited_to_some_models_may_not_use_others_for_responses(
    tollway: Tollway, fake: FakeProvider
) -> None:
    limited = {"id": "narrow", "hash": hash_key(BUDGET_KEY), "tenant": "acme",
               "scopes": ["llm"], "models": ["gpt-4o-mini"]}  # fmt: skip
    client = await tollway({"keys": [*base_config_data()["keys"], limited]})
    with pytest.raises(openai.PermissionDeniedError):
        await sdk(client, BUDGET_KEY).responses.create(model="solo", input="x")
    assert fake.hits("responses") == 0


async def test_failing_responses_open_the_breaker_which_then_answers_without_calling(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("responses", "500", "500", "500")
    body = {"model": "solo", "input": "x"}
    # one request: its first try and two retries fail, the third failure opens the breaker
    assert (await client.post("/v1/responses", json=body, headers=AUTH)).status == 500
    refused = await client.post("/v1/responses", json=body, headers=AUTH)
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "circuit_open"
    assert fake.hits("responses") == 3
