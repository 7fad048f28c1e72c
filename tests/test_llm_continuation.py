"""A stream that fails mid-answer is finished on another call: the client reads one
whole answer (exactly the text the model would have sent), one finish reason, one
``[DONE]``, usage summed over the calls; when that cannot work, an in-band error and
never a clean end. Through the real `openai` SDK against the fake providers."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import USER_KEY
from tests.fake_providers import FakeProvider
from tests.llm_support import HI, Tollway, metrics_text, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture

TOKENS = [f"w{index} " for index in range(60)]
FULL = "".join(TOKENS)


def config(prefill: bool) -> dict[str, Any]:
    return {
        "models": {
            "writer": {"backend": "openai", "fallbacks": ["helper"]},
            "helper": {"backend": "groq", "prefill": prefill},
        }
    }


async def start(tollway: Tollway, fake: FakeProvider, fallback: str) -> TestClient:
    """Tollway with `writer` falling back to `helper`, both answering `FULL`; `helper`
    takes a prefill, refuses one, or is not configured for one."""
    client = await tollway(config(prefill=fallback != "regenerate"))
    fake.answer("writer", TOKENS)
    fake.answer("helper", TOKENS)
    if fallback == "refuses-prefill":
        fake.refuse_prefill("helper")
    return client


async def sdk_stream(client: TestClient, **extra: Any) -> tuple[str, list[str], Any]:
    """The text, the finish reasons and the last usage the SDK reads."""
    stream = await sdk(client).chat.completions.create(
        model="writer", messages=HI, stream=True, **extra
    )
    text, finishes, usage = "", [], None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        usage = chunk.usage or usage
    return text, finishes, usage


async def raw_events(client: TestClient) -> list[bytes]:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "writer", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert response.status == 200
    body = await response.read()
    return [block[6:] for block in body.split(b"\n\n") if block.startswith(b"data: ")]


FAILURES = ["cut-after:40", "stall-after:20", "clean-cut-after:30", "junk-after:25"]
FALLBACKS = ["prefill", "refuses-prefill", "regenerate"]


@pytest.mark.parametrize("fallback", FALLBACKS)
@pytest.mark.parametrize("failure", FAILURES)
async def test_a_stream_failing_mid_answer_is_finished_on_the_fallback(
    tollway: Tollway, fake: FakeProvider, failure: str, fallback: str
) -> None:
    client = await start(tollway, fake, fallback)
    fake.script_model("writer", failure, failure)
    text, finishes, _ = await sdk_stream(client)
    assert text == FULL
    assert finishes == ["stop"]
    events = await raw_events(client)
    assert events.count(b"[DONE]") == 1 and events[-1] == b"[DONE]"
    parsed = [orjson.loads(e) for e in events[:-1]]
    assert not any("error" in event for event in parsed)
    assert len({event["id"] for event in parsed}) == 1  # one answer, one id
    assert "".join(c["delta"].get("content") or "" for e in parsed for c in e["choices"]) == FULL
    assert fake.hits_for("writer") == 2
    helper_calls = [s.body for s in fake.seen if s.body and s.body.get("model") == "helper"]
    prefilled = [b for b in helper_calls if b["messages"][-1]["role"] == "assistant"]
    assert len(prefilled) == (0 if fallback == "regenerate" else 2)
    how = "prefill" if fallback == "prefill" else "regenerate"
    assert f'tollway_stream_continuations_total{{how="{how}",model="writer"}} 2.0' in (
        await metrics_text(client)
    )


@pytest.mark.parametrize("fallback", ["prefill", "regenerate"])
async def test_usage_sums_what_both_calls_were_billed(
    tollway: Tollway, fake: FakeProvider, fallback: str
) -> None:
    client = await start(tollway, fake, fallback)
    fake.script_model("writer", "cut-after:40")
    text, _, usage = await sdk_stream(client, stream_options={"include_usage": True})
    assert text == FULL
    # the cut call: 4 prompt tokens and the 40 it sent; then the continuation's own
    if fallback == "prefill":
        assert (usage.prompt_tokens, usage.completion_tokens) == (4 + 44, 40 + 20)
    else:
        assert (usage.prompt_tokens, usage.completion_tokens) == (4 + 4, 40 + 60)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    out = usage.completion_tokens
    metric = f'tollway_tokens_total{{direction="out",key_id="app-1",model="helper"}} {out}.0'
    assert metric in await metrics_text(client)


async def test_one_malformed_event_is_dropped_and_the_stream_goes_on(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await start(tollway, fake, "prefill")
    fake.script_model("writer", "malformed-after:30", "malformed-after:30")
    text, finishes, _ = await sdk_stream(client)
    assert text == FULL and finishes == ["stop"]
    events = await raw_events(client)
    assert events.count(b"[DONE]") == 1
    assert fake.hits_for("helper") == 0  # nothing to continue: the stream went on
    metrics = await metrics_text(client)
    assert 'tollway_stream_malformed_events_total{backend="openai"} 2.0' in metrics


async def test_without_a_fallback_the_same_model_continues(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"models": {"writer": {"backend": "openai"}}})
    fake.answer("writer", TOKENS)
    fake.script_model("writer", "cut-after:40")
    text, finishes, _ = await sdk_stream(client)
    assert text == FULL and finishes == ["stop"]
    assert fake.hits_for("writer") == 2


async def test_a_stream_that_cannot_be_continued_ends_with_an_in_band_error(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await start(tollway, fake, "regenerate")
    fake.answer("helper", [f"x{index} " for index in range(60)])  # another answer
    fake.script_model("writer", "cut-after:40", *["diverge"] * 4)
    with pytest.raises(openai.APIError) as raised:
        await sdk_stream(client)
    assert raised.value.message
    fake.forget_scripts()
    fake.script_model("writer", "cut-after:40", *["diverge"] * 4)
    events = await raw_events(client)
    assert b"[DONE]" not in events
    last = orjson.loads(events[-1])
    assert last["error"]["request_id"]
    text = "".join(
        c["delta"].get("content") or ""
        for e in map(orjson.loads, events[:-1])
        for c in e["choices"]
    )
    assert text == "".join(TOKENS[:40])  # nothing of the answers that did not match
    assert 'how="gave_up"' in await metrics_text(client)


async def test_no_continuation_is_tried_past_the_request_deadline(
    tollway: Tollway, fake: FakeProvider
) -> None:
    short = {"backends": {"openai": {"timeout_s": 1}, "groq": {"timeout_s": 1}}}
    client = await tollway({**config(prefill=True), **short})
    fake.answer("writer", TOKENS)
    fake.stream_gap_s = 0.03  # 40 tokens take 1.2 s: the cut comes past the 1 s deadline
    fake.script_model("writer", "cut-after:40")
    events = await raw_events(client)
    assert b"[DONE]" not in events and b'"error"' in events[-1]
    assert fake.hits_for("helper") == 0


def test_prefill_settings_are_checked() -> None:
    from gateway.app import check_config
    from gateway.config.reader import ConfigError
    from tests.conftest import make_config

    base = {"backends": {"x": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}}}
    vllm = {"continue_final_message": True, "add_generation_prompt": False}
    config = make_config({**base, "models": {"m": {"backend": "x", "prefill_body": vllm}}})
    assert config.models["m"].prefill is False  # the default: regenerate, never prefill
    assert dict(config.models["m"].prefill_body) == vllm
    with pytest.raises(ConfigError, match=r"models\.m\.prefill: expected true or false"):
        make_config({**base, "models": {"m": {"backend": "x", "prefill": "yes"}}})
    with pytest.raises(ConfigError, match=r"models\.m\.prefill_body\.messages: set by Tollway"):
        make_config({**base, "models": {"m": {"backend": "x", "prefill_body": {"messages": []}}}})
    alias = {"x": {**base["backends"]["x"], "stream_idle_timeout_s": "long"}}
    with pytest.raises(ConfigError, match=r"backends\.x\.stream_idle_timeout_s: expected a number"):
        check_config(make_config({"backends": alias}))
