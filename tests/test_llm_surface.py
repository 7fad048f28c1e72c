"""Legacy completions, moderations, images and speech through the real openai SDK, with
their usage; an API a backend does not serve is a clear error, never an upstream 404."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import USER_KEY
from tests.fake_openai_surface import COMPLETION_PIECES, IMAGE_B64, SPEECH_BYTES
from tests.fake_providers import FakeProvider
from tests.llm_support import Tollway, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture
from tests.surface_support import usage_row

AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def rid(value: str) -> dict[str, dict[str, str]]:
    return {"extra_headers": {"X-Request-ID": value}}


async def test_a_legacy_completion_through_the_sdk(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    answer = await sdk(client).completions.create(
        model="solo", prompt="Tell me a story", max_tokens=5, **rid("cmpl-1")
    )
    assert answer.choices[0].text == "".join(COMPLETION_PIECES)
    assert (
        fake.seen[-1].path == "/v1/completions" and fake.seen[-1].body["model"] == "solo-upstream"
    )
    row = await usage_row(client, "cmpl-1")
    assert (row["route_class"], row["tokens_in"], row["tokens_out"]) == ("completions", 3, 4)


async def test_a_streamed_legacy_completion_reassembles_and_hides_the_usage_it_asked_for(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    stream = await sdk(client).completions.create(
        model="solo", prompt="Tell me a story", stream=True, **rid("cmpl-stream")
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "".join(COMPLETION_PIECES)
    assert all(c.choices for c in chunks)  # the usage chunk the client did not ask for: hidden
    assert fake.seen[-1].body["stream_options"] == {"include_usage": True}
    row = await usage_row(client, "cmpl-stream")
    assert (row["tokens_in"], row["tokens_out"], row["status"]) == (3, 4, 200)


async def test_a_streamed_completion_keeps_the_usage_chunk_when_asked(tollway: Tollway) -> None:
    client = await tollway()
    stream = await sdk(client).completions.create(
        model="solo", prompt="x", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_a_completion_stream_cut_midway_raises_in_the_sdk(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.script("completions", "cut")
    stream = await sdk(client).completions.create(model="solo", prompt="x", stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_moderations_through_the_sdk(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway({"models": {"omni-moderation-latest": {"backend": "openai"}}})
    answer = await sdk(client).moderations.create(
        model="omni-moderation-latest", input=["I will kill the process", "hello"], **rid("mod-1")
    )
    assert [r.flagged for r in answer.results] == [True, False]
    row = await usage_row(client, "mod-1")
    assert (row["route_class"], row["model"], row["rows_out"]) == (
        "moderations",
        "omni-moderation-latest",
        2,
    )


async def test_moderations_without_a_model_use_the_first_configured_moderation_model(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway(
        {
            "models": {
                "solo": {"apis": ["chat", "responses"]},
                "gpt-4o-mini": {"apis": ["chat"]},
                "llama-3.1-8b-instant": {"apis": ["chat"]},
                "omni-moderation-latest": {"backend": "openai", "apis": ["moderations"]},
            }
        }
    )
    answer = await sdk(client).moderations.create(input="hello")
    assert answer.results[0].flagged is False
    assert fake.seen[-1].body["model"] == "omni-moderation-latest"


async def test_images_through_the_sdk_record_count_and_size(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"models": {"gpt-image-1": {"backend": "openai"}}})
    answer = await sdk(client).images.generate(
        model="gpt-image-1", prompt="a toll booth", n=2, size="1024x1536", **rid("img-1")
    )
    assert [image.b64_json for image in answer.data or []] == [IMAGE_B64, IMAGE_B64]
    base64.b64decode(IMAGE_B64 + "==")  # it is what the fake sent
    row = await usage_row(client, "img-1")
    assert (row["route_class"], row["images"], row["image_size"]) == ("images", 2, "1024x1536")
    assert (row["tokens_in"], row["tokens_out"]) == (10, 544)


async def test_an_image_answer_cut_midway_is_a_broken_answer_not_a_short_one(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"models": {"gpt-image-1": {"backend": "openai"}}})
    fake.script("images", "cut")
    response = await client.post(
        "/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "x", "n": 8},
        headers={**AUTH, "X-Request-ID": "img-cut"},
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert (await usage_row(client, "img-cut"))["status"] == 502


async def test_speech_audio_bytes_are_identical_to_the_providers_with_its_content_type(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"models": {"tts-1": {"backend": "openai"}}})
    answer = await sdk(client).audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there", response_format="flac", **rid("tts-1")
    )
    assert answer.content == SPEECH_BYTES
    assert answer.response.headers["content-type"] == "audio/flac"
    row = await usage_row(client, "tts-1")
    assert (row["route_class"], row["audio_bytes"]) == ("audio", len(SPEECH_BYTES))


async def test_speech_arrives_in_pieces_as_the_provider_sends_them(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"models": {"tts-1": {"backend": "openai"}}})
    response = await client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": "x"},
        headers=AUTH,
    )
    pieces = [piece async for piece in response.content.iter_any()]
    assert b"".join(pieces) == SPEECH_BYTES and len(pieces) > 1


async def test_speech_cut_midway_is_a_broken_answer(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway({"models": {"tts-1": {"backend": "openai"}}})
    fake.script("speech", "cut")
    response = await client.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": "x"},
        headers=AUTH,
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "solo", "prompt": "x"}),
        ("/v1/images/generations", {"model": "solo", "prompt": "x"}),
        ("/v1/moderations", {"model": "solo", "input": "x"}),
        ("/v1/audio/speech", {"model": "solo", "input": "x", "voice": "alloy"}),
        ("/v1/embeddings", {"model": "solo", "input": "x"}),
    ],
)
async def test_a_model_whose_backend_lacks_the_api_is_a_clear_400_without_an_upstream_call(
    tollway: Tollway, fake: FakeProvider, path: str, body: dict[str, str]
) -> None:
    client = await tollway(
        {
            "backends": {"openai": {"apis": ["chat", "responses", "moderations"]}},
            "models": {"solo": {"apis": ["chat"]}},
        }  # fmt: skip
    )
    answer = await client.post(path, json=body, headers=AUTH)
    assert answer.status == 400, path
    error = (await answer.json())["error"]
    assert error["code"] == "unsupported_api" and error["param"] == "model"
    assert len(fake.seen) == 0


async def test_an_api_no_backend_serves_is_a_503_that_says_so(tollway: Tollway) -> None:
    client = await tollway({"backends": {"openai": {"apis": ["chat"]}, "groq": {"apis": ["chat"]}}})
    answer = await client.post(
        "/v1/images/generations", json={"model": "solo", "prompt": "x"}, headers=AUTH
    )
    assert answer.status == 503
    assert answer.headers["x-should-retry"] == "false"
    assert "images" in (await answer.json())["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "solo"}, "prompt"),
        ("/v1/images/generations", {"model": "solo", "prompt": "x", "n": 11}, "n"),
        ("/v1/images/generations", {"model": "solo", "prompt": "x", "stream": True}, "stream"),
        ("/v1/moderations", {"model": "solo", "input": []}, "input"),
        ("/v1/audio/speech", {"model": "solo", "input": "", "voice": "alloy"}, "input"),
        ("/v1/responses", {"model": "solo", "input": 5}, "input"),
        ("/v1/responses", {"model": "solo", "input": "x", "stream": "yes"}, "stream"),
    ],
)
async def test_bad_bodies_get_a_400_naming_the_field(
    tollway: Tollway, fake: FakeProvider, path: str, body: dict[str, object], param: str
) -> None:
    client = await tollway()
    answer = await client.post(path, json=body, headers=AUTH)
    assert answer.status == 400
    assert (await answer.json())["error"]["param"] == param
    assert len(fake.seen) == 0


async def test_these_routes_are_not_cached_by_default(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway({"models": {"omni-moderation-latest": {"backend": "openai"}}})
    body = {"model": "omni-moderation-latest", "input": "hello"}
    for _ in range(2):
        answer = await client.post("/v1/moderations", json=body, headers=AUTH)
        assert "X-Cache" not in answer.headers
    assert fake.hits("moderations") == 2


async def test_responses_may_be_cached_only_when_not_stored(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"cache": {"routes": ["responses"]}})
    unstored = {"model": "solo", "input": "x", "store": False}
    caches = []
    for _ in range(2):
        answer = await client.post("/v1/responses", json=unstored, headers=AUTH)
        caches.append(answer.headers["X-Cache"])
    assert caches == ["MISS", "HIT"] and fake.hits("responses") == 1
    stored = {"model": "solo", "input": "x"}
    for _ in range(2):
        answer = await client.post("/v1/responses", json=stored, headers=AUTH)
        assert answer.headers["X-Cache"] == "BYPASS"  # each stored response is a new object
    assert fake.hits("responses") == 3


async def test_cached_moderations_are_kept_per_tenant(tollway: Tollway, fake: FakeProvider) -> None:
    from tests.conftest import OTHER_TENANT_KEY

    client = await tollway(
        {
            "cache": {"routes": ["moderations"]},
            "models": {"omni-moderation-latest": {"backend": "openai"}},
        }  # fmt: skip
    )
    body = {"model": "omni-moderation-latest", "input": "hello"}
    first = await client.post("/v1/moderations", json=body, headers=AUTH)
    again = await client.post("/v1/moderations", json=body, headers=AUTH)
    other = await client.post(
        "/v1/moderations", json=body, headers={"Authorization": f"Bearer {OTHER_TENANT_KEY}"}
    )
    assert [first.headers["X-Cache"], again.headers["X-Cache"], other.headers["X-Cache"]] == [
        "MISS", "HIT", "MISS",
    ]  # fmt: skip


async def test_each_new_routes_body_schema_accepts_what_the_sdk_sends(
    tollway: Tollway, fake: FakeProvider
) -> None:
    import jsonschema

    client = await tollway(
        {"models": {name: {"backend": "openai"} for name in ("tts-1", "gpt-image-1", "omni")}}
    )
    api = sdk(client)
    first = await api.responses.create(
        model="gpt-4o-mini", input=[{"role": "user", "content": "hi"}], instructions="be brief",
        max_output_tokens=50, metadata={"a": "b"}, tools=[], temperature=0.2, store=True,
    )  # fmt: skip
    await api.responses.create(model="gpt-4o-mini", input="x", previous_response_id=first.id)
    async for _ in await api.responses.create(model="gpt-4o-mini", input="x", stream=True):
        pass
    await api.completions.create(model="solo", prompt=["a", "b"], max_tokens=3, n=1)
    async for _ in await api.completions.create(model="solo", prompt="x", stream=True):
        pass
    await api.moderations.create(model="omni", input=["a", "b"])
    await api.images.generate(model="gpt-image-1", prompt="x", n=1, size="1024x1024")
    await api.audio.speech.create(model="tts-1", voice="alloy", input="x", speed=1.5)
    paths: dict[str, Any] = (await (await client.get("/openapi.json")).json())["paths"]
    checked = 0
    for seen in fake.seen:
        operation = paths.get(seen.path, {}).get("post", {})
        schema = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if schema is not None:
            jsonschema.validate(seen.body, schema["schema"])
            checked += 1
    assert checked == 8
