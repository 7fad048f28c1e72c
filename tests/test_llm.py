"""The LLM proxy through the real SDKs, against fake providers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import groq
import openai
import pytest

from gateway.app import check_config, create_app
from gateway.config.reader import ConfigError
from tests.conftest import ADMIN_KEY, USER_KEY, base_config_data, make_config
from tests.fake_providers import TAVILY_KEY, UPSTREAM_KEY, FakeProvider
from tests.llm_support import HI, Tollway, metrics_text, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture

# --- the happy paths, through the SDKs users use -------------------------------------


async def test_chat_through_the_openai_sdk_swaps_keys_and_forwards_the_request_id(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    raw = await sdk(client).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake"
    assert raw.headers["X-Tollway-Model"] == "gpt-4o-mini"
    request_id = raw.headers["X-Request-ID"]
    assert completion._request_id == request_id
    seen = fake.seen[-1]
    assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert USER_KEY not in str(seen.headers)
    assert seen.headers["X-Request-ID"] == request_id
    assert not any(h.lower().startswith("x-stainless") for h in seen.headers)
    text = await metrics_text(client)
    assert 'tollway_tokens_total{direction="in",key_id="app-1",model="gpt-4o-mini"} 5.0' in text
    assert 'tollway_tokens_total{direction="out",key_id="app-1",model="gpt-4o-mini"} 7.0' in text


async def test_the_access_log_line_names_backend_model_and_tokens(
    tollway: Tollway, fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    client = await tollway()
    fake.script("chat", "400-context")  # served by the fallback: the line names that one
    with caplog.at_level("INFO", logger="tollway.access"):
        await sdk(client).chat.completions.create(model="gpt-4o-mini", messages=HI)
    (line,) = [r for r in caplog.records if r.name == "tollway.access"]
    assert (line.backend, line.model) == ("groq", "llama-3.1-8b-instant")  # type: ignore[attr-defined]
    assert (line.tokens_in, line.tokens_out) == (5, 7)  # type: ignore[attr-defined]


async def test_sync_sdk_embeddings_and_models(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    url = str(client.make_url("/v1"))

    def use_sync_sdk() -> tuple[Any, Any, Any]:
        sync = openai.OpenAI(base_url=url, api_key=USER_KEY, max_retries=0)
        embedded = sync.embeddings.create(model="gpt-4o-mini", input=["a", "b"])
        models = sync.models.list()
        one = sync.models.retrieve("solo")
        return embedded, models, one

    embedded, models, one = await asyncio.to_thread(use_sync_sdk)
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 3
    assert {m.id for m in models.data} == {"gpt-4o-mini", "llama-3.1-8b-instant", "solo"}
    assert one.id == "solo" and one.owned_by == "openai"
    assert fake.seen[-1].body["model"] == "gpt-4o-mini"


async def test_stream_with_include_usage_reaches_the_client(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    stream = await sdk(client).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_stream_asks_upstream_for_usage_and_hides_it_from_a_client_that_did_not(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    stream = await sdk(client).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake.seen[-1].body["stream_options"] == {"include_usage": True}
    text = await metrics_text(client)
    assert 'tollway_tokens_total{direction="out",key_id="app-1",model="gpt-4o-mini"} 3.0' in text
    assert 'tollway_time_to_first_token_seconds_count{backend="openai"} 1.0' in text


async def test_groq_sdk_works_at_the_openai_v1_prefix(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    host = str(client.make_url("")).rstrip("/")
    groq_client = groq.AsyncGroq(base_url=host, api_key=USER_KEY, max_retries=0)
    completion = await groq_client.chat.completions.create(
        model="llama-3.1-8b-instant", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello from the fake"
    assert fake.seen[-1].path == "/openai/v1/chat/completions"


async def test_tavily_sdk_search_extract_and_its_error_message(
    tollway: Tollway, fake: FakeProvider
) -> None:
    from tavily import TavilyClient
    from tavily.errors import UsageLimitExceededError

    client = await tollway()
    url = str(client.make_url("/v1"))

    def use_tavily() -> tuple[Any, Any, str]:
        tavily = TavilyClient(api_key=USER_KEY, api_base_url=url)
        found = tavily.search("what is a gateway")
        pages = tavily.extract(urls=["https://example.com/"])
        fake.script("search", "429", "429", "429")  # our own retries give up too
        try:
            tavily.search("again")
        except UsageLimitExceededError as exc:
            return found, pages, str(exc)
        raise AssertionError("expected UsageLimitExceededError")

    found, pages, message = await asyncio.to_thread(use_tavily)
    assert found["results"][0]["url"] == "https://example.com/"
    assert found["images"] == []
    assert pages["results"][0]["raw_content"] == "text of the page"
    assert pages["failed_results"] == []
    assert "rate limited" in message
    assert fake.seen[0].headers["Authorization"] == f"Bearer {TAVILY_KEY}"


async def test_search_bad_body_has_tavily_detail_and_the_error_shape(tollway: Tollway) -> None:
    client = await tollway()
    response = await client.post(
        "/v1/search", json={"max_results": 3}, headers={"Authorization": f"Bearer {USER_KEY}"}
    )
    assert response.status == 400
    body = await response.json()
    assert body["error"]["param"] == "query"
    assert body["detail"]["error"] == body["error"]["message"]


# --- routing and permissions -----------------------------------------------------------


async def test_unknown_model_is_404_and_a_key_limited_to_models_gets_403(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway(
        {
            "keys": base_config_data()["keys"]
            + [
                {
                    "id": "narrow",
                    "hash": _hash("tw_narrow-0123456789abcdefghijkl"),
                    "tenant": "acme",
                    "scopes": ["llm"],
                    "models": ["solo", "groq/*"],
                }
            ]
        }  # fmt: skip
    )
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk(client).chat.completions.create(model="nope", messages=HI)
    assert missing.value.code == "model_not_found"
    narrow = sdk(client, "tw_narrow-0123456789abcdefghijkl")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await narrow.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert denied.value.code == "model_not_allowed"
    assert denied.value.response.headers["x-should-retry"] == "false"
    models = await narrow.models.list()
    assert [m.id for m in models.data] == ["solo"]
    done = await narrow.chat.completions.create(model="groq/llama-3.3-70b", messages=HI)
    assert done.model == "llama-3.3-70b"
    assert fake.seen[-1].path == "/openai/v1/chat/completions"
    assert fake.hits("chat") == 1  # refused requests never reached the upstream


def _hash(key: str) -> str:
    from gateway.config.keyhash import hash_key

    return hash_key(key)


async def test_the_body_cannot_choose_the_upstream(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": "solo",
            "messages": [{"role": "user", "content": "x"}],
            "api_base": "http://169.254.169.254/",
            "base_url": "http://169.254.169.254/",
        },
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert response.status == 200
    assert fake.hits("chat") == 1 and fake.seen[-1].body["model"] == "solo-upstream"


async def test_bad_chat_bodies_are_400(tollway: Tollway) -> None:
    client = await tollway()
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    for body, param in (
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "solo", "messages": []}, "messages"),
        ({"model": "solo", "messages": [{"role": "user"}], "stream": "yes"}, "stream"),
    ):
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status == 400, body
        assert (await response.json())["error"]["param"] == param


# --- resilience -----------------------------------------------------------------------


async def test_upstream_400_keeps_its_code_and_is_neither_retried_nor_failed_over(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "400-filter")
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(client).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert raised.value.code == "content_filter"
    assert raised.value.param == "prompt"
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert fake.hits("chat") == 1


async def test_upstream_credentials_refused_is_502_without_the_provider_message(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "401")
    with pytest.raises(openai.APIStatusError) as raised:
        await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_auth_failed"
    assert "sk-" not in str(raised.value)


async def test_503_and_reset_are_retried_then_succeed(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    fake.script("chat", "503", "reset")
    completion = await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert completion.choices[0].message.content == "Hello from the fake"
    assert fake.hits("chat") == 3
    text = await metrics_text(client)
    assert 'tollway_upstream_retries_total{backend="openai",reason="5xx"} 1.0' in text
    assert 'tollway_upstream_retries_total{backend="openai",reason="reset"} 1.0' in text


async def test_429_retry_honours_retry_after_ms(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    fake.script("chat", "429")
    started = time.monotonic()
    await sdk(client).chat.completions.create(model="solo", messages=HI)
    gap = fake.seen[1].at - fake.seen[0].at
    assert 0.25 <= gap < 0.8 and time.monotonic() - started < 2  # backoff beats 50 ms


async def test_429_whose_retry_after_exceeds_the_deadline_is_answered_with_it(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "429-long")
    with pytest.raises(openai.RateLimitError) as raised:
        await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert raised.value.response.headers["Retry-After"] == "600"
    assert fake.hits("chat") == 1


async def test_429_without_retry_after_is_retried_with_backoff(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "429-bare", "429-bare")
    completion = await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert completion.choices[0].message.content == "Hello from the fake"
    assert fake.hits("chat") == 3
    # jitter around an exponential ceiling: 0.25-0.75 s, then 0.5-1.5 s
    gaps = [later.at - earlier.at for earlier, later in zip(fake.seen, fake.seen[1:], strict=False)]
    assert 0.25 <= gaps[0] < 0.8 and 0.5 <= gaps[1] < 1.6


async def test_half_open_breaker_admits_exactly_one_probe_then_closes(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway(
        {"backends": {"openai": {"breaker": {"failures": 2, "reset_s": 0.3}, "retries": 0}}}
    )
    api = sdk(client)
    fake.script("chat", "500", "500")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await api.chat.completions.create(model="solo", messages=HI)
    await asyncio.sleep(0.35)
    fake.slow_s = 0.6  # within the first-token deadline (1 s here)
    fake.script("chat", "slow")  # the probe takes a while and succeeds
    probe = asyncio.ensure_future(api.chat.completions.create(model="solo", messages=HI))
    for _ in range(200):
        if fake.hits("chat") == 3:
            break
        await asyncio.sleep(0.01)  # noqa: ASYNC110 - waiting on another server's state
    with pytest.raises(openai.APIStatusError) as raised:
        await api.chat.completions.create(model="solo", messages=HI)
    assert raised.value.status_code == 503 and raised.value.code == "circuit_open"
    assert (await probe).choices[0].message.content == "Hello from the fake"
    await api.chat.completions.create(model="solo", messages=HI)  # closed again
    assert fake.hits("chat") == 4
    text = await metrics_text(client)
    transitions = 'tollway_breaker_transitions_total{backend="openai",model="solo-upstream"'
    assert transitions + ',state="half_open"} 1.0' in text


async def test_a_stream_is_retried_and_failed_over_before_its_first_byte(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("chat", "503", "reset")
    stream = await sdk(client).chat.completions.create(model="solo", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there"
    assert fake.hits("chat") == 3
    fake.script("chat", "500", "500", "500")
    raw = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert raw.headers["X-Tollway-Model"] == "llama-3.1-8b-instant"
    assert (await raw.read()).endswith(b"data: [DONE]\n\n")


async def test_retries_are_bounded(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    fake.script("chat", "503", "503", "503", "503")
    with pytest.raises(openai.InternalServerError) as raised:
        await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert raised.value.status_code == 503
    assert fake.hits("chat") == 3  # one try and two retries


async def test_5xx_falls_over_to_the_fallback_model(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway({"backends": {"openai": {"retries": 0}}})
    fake.script("chat", "500")
    raw = await sdk(client).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI
    )
    assert raw.headers["X-Tollway-Model"] == "llama-3.1-8b-instant"
    assert raw.parse().model == "llama-3.1-8b-instant"
    assert [s.path for s in fake.seen] == ["/v1/chat/completions", "/openai/v1/chat/completions"]
    text = await metrics_text(client)
    assert (
        'tollway_fallbacks_total{fallback="llama-3.1-8b-instant",model="gpt-4o-mini",reason="5xx"}'
        " 1.0" in text
    )


async def test_a_silent_upstream_times_out_once_then_falls_over_without_retrying(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"backends": {"openai": {"timeout_s": 0.5}}})
    fake.script("chat", "hang")
    started = time.monotonic()
    raw = await sdk(client).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI
    )
    assert raw.headers["X-Tollway-Model"] == "llama-3.1-8b-instant"
    assert fake.hits("chat") == 2
    assert time.monotonic() - started < 2


async def test_connect_timeout_bounds_a_backend_that_never_accepts(
    tollway: Tollway, fake: FakeProvider
) -> None:
    # A listening socket that never accepts, its backlog filled: the next SYN is dropped,
    # so connecting hangs until the connect timeout (not the 5 s deadline) cuts it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        client = await tollway(
            {
                "backends": {
                    "openai": {
                        "base_url": f"http://127.0.0.1:{port}/v1",
                        "connect_timeout_s": 0.2,
                        "timeout_s": 5,
                        "retries": 0,
                    }
                }
            }
        )
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as raised:
            await sdk(client).chat.completions.create(model="solo", messages=HI)
        assert raised.value.status_code == 503
        assert time.monotonic() - started < 2
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_deadline_without_fallback_is_504(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway({"backends": {"openai": {"timeout_s": 0.3}}})
    fake.script("chat", "hang")
    with pytest.raises(openai.APIStatusError) as raised:
        await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert raised.value.status_code == 504
    assert raised.value.code == "upstream_timeout"


async def test_breaker_opens_after_failures_and_answers_without_calling(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"backends": {"openai": {"retries": 0}}})
    fake.script("chat", "500", "500", "500")
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            await sdk(client).chat.completions.create(model="solo", messages=HI)
    with pytest.raises(openai.APIStatusError) as raised:
        await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert raised.value.status_code == 503 and raised.value.code == "circuit_open"
    assert int(raised.value.response.headers["Retry-After"]) >= 1
    assert fake.hits("chat") == 3
    detailed = await client.get(
        "/health/detailed", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    components = (await detailed.json())["components"]
    assert components["openai"]["models"]["solo-upstream"]["breaker"] == "open"
    assert components["openai"]["breaker"] == "closed"  # the backend itself answers
    # another model of the same backend is still served by its primary
    raw = await sdk(client).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI
    )
    assert raw.headers["X-Tollway-Model"] == "gpt-4o-mini"


async def test_outbound_limit_waits_briefly_then_429s(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway(
        {"backends": {"openai": {"outbound_limit": "2/minute", "outbound_wait_s": 0.1}}}
    )
    for _ in range(2):
        await sdk(client).chat.completions.create(model="solo", messages=HI)
    with pytest.raises(openai.RateLimitError) as raised:
        await sdk(client).chat.completions.create(model="solo", messages=HI)
    assert raised.value.code == "upstream_quota"
    assert "Retry-After" in raised.value.response.headers
    assert fake.hits("chat") == 2


async def test_bulkhead_caps_in_flight_calls(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway({"backends": {"openai": {"max_in_flight": 1, "timeout_s": 1}}})
    fake.script("chat", "hang")
    api = sdk(client)
    first = asyncio.ensure_future(api.chat.completions.create(model="solo", messages=HI))
    for _ in range(200):
        if fake.hits("chat"):
            break
        await asyncio.sleep(0.01)  # noqa: ASYNC110 - waiting on another server's state
    with pytest.raises(openai.APIStatusError) as raised:
        await api.chat.completions.create(model="solo", messages=HI)
    assert raised.value.status_code == 503 and raised.value.code == "backend_overloaded"
    with pytest.raises(openai.APIStatusError):
        await first


# --- configuration --------------------------------------------------------------------


def test_adapter_options_are_checked_when_the_app_is_built() -> None:
    base = {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}
    with pytest.raises(ConfigError, match=r"backends\.x\.base_urll: unknown option"):
        check_config(make_config({"backends": {"x": {**base, "base_urll": "http://a"}}}))
    with pytest.raises(ConfigError, match=r"backends\.x\.base_url: expected an http"):
        create_app(make_config({"backends": {"x": {**base, "base_url": "file:///etc/passwd"}}}))
    with pytest.raises(ConfigError, match=r"backends\.x\.idle_timeout_s: expected a number"):
        check_config(make_config({"backends": {"x": {**base, "idle_timeout_s": "soon"}}}))
    with pytest.raises(ConfigError, match=r"backends\.x\.headers: set the provider's key"):
        headers = {"Authorization": "Bearer y"}
        check_config(make_config({"backends": {"x": {**base, "headers": headers}}}))


async def test_a_body_whose_model_the_upstream_knows_goes_upstream_as_it_came(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    raw = b'{ "messages" : [ {"role":"user","content":"x"} ], "model":"gpt-4o-mini" }'
    answer = await client.post(
        "/v1/chat/completions",
        data=raw,
        headers={"Authorization": f"Bearer {USER_KEY}", "Content-Type": "application/json"},
    )
    assert answer.status == 200
    assert fake.seen[-1].raw == raw  # not decoded and encoded again
    renamed = await client.post(
        "/v1/chat/completions",
        json={"model": "solo", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {USER_KEY}"},
    )
    assert renamed.status == 200
    assert fake.seen[-1].body["model"] == "solo-upstream"  # renamed: encoded anew
