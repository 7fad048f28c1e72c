"""Audio uploads streamed to the provider (through the real groq and openai SDKs), their
own size limit counted while streaming, their form fields checked, and usage in seconds
(else bytes)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import groq
import openai
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import USER_KEY
from tests.fake_openai_surface import TRANSCRIPT
from tests.fake_providers import FakeProvider
from tests.llm_support import Tollway, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture
from tests.surface_support import usage_row

AUTH = {"Authorization": f"Bearer {USER_KEY}"}
AUDIO = bytes(range(256)) * 4096  # 1 MiB of "audio"
MODELS = {"models": {"whisper": {"backend": "groq", "model": "whisper-large-v3"}}}


def rid(value: str) -> dict[str, dict[str, str]]:
    return {"extra_headers": {"X-Request-ID": value}}


async def test_a_transcription_through_the_groq_sdk_streams_the_file_to_the_provider(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway(MODELS)
    groq_client = groq.AsyncGroq(base_url=str(client.make_url("")), api_key=USER_KEY)
    answer = await groq_client.audio.transcriptions.create(
        file=("talk.wav", AUDIO), model="whisper", language="en", **rid("groq-asr")
    )
    assert answer.text == TRANSCRIPT
    upload = fake.uploads[-1]
    assert upload["path"] == "/openai/v1/audio/transcriptions"
    assert upload["fields"]["model"] == ["whisper-large-v3"]  # the provider's name for it
    assert upload["fields"]["language"] == ["en"]
    assert upload["file_name"] == "talk.wav"
    assert upload["file_sha256"] == hashlib.sha256(AUDIO).hexdigest()
    assert "Transfer-Encoding" not in upload["headers"]  # an exact length, as the SDK sent
    row = await usage_row(client, "groq-asr")
    assert (row["route_class"], row["model"], row["audio_seconds"]) == ("audio", "whisper", 42)


async def test_a_transcription_through_the_openai_sdk_and_its_text_format(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway(MODELS)
    text = await sdk(client).audio.transcriptions.create(
        file=("a.mp3", AUDIO), model="whisper", response_format="text"
    )
    assert text == TRANSCRIPT + "\n"
    verbose = await sdk(client).audio.transcriptions.create(
        file=("a.mp3", AUDIO), model="whisper", response_format="verbose_json",
        timestamp_granularities=["segment"], **rid("verbose"),
    )  # fmt: skip
    assert verbose.duration == 12.5
    assert (await usage_row(client, "verbose"))["audio_seconds"] == 12.5
    assert fake.uploads[-1]["fields"]["timestamp_granularities[]"] == ["segment"]


async def test_without_reported_seconds_the_usage_is_the_bytes_uploaded(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway(MODELS)
    fake.script("transcriptions", "no-usage")
    await sdk(client).audio.transcriptions.create(
        file=("a.wav", AUDIO), model="whisper", **rid("bytes-usage")
    )
    row = await usage_row(client, "bytes-usage")
    assert (row["audio_seconds"], row["audio_bytes"]) == (0, len(AUDIO))


async def test_a_translation_is_relayed_the_same_way(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway(MODELS)
    answer = await sdk(client).audio.translations.create(file=("a.wav", AUDIO), model="whisper")
    assert answer.text == TRANSCRIPT
    assert fake.uploads[-1]["path"] == "/openai/v1/audio/translations"  # whisper is on groq


async def test_a_form_with_the_file_before_the_model_is_served_too(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway(MODELS)
    form = aiohttp.FormData()
    form.add_field("file", AUDIO, filename="first.wav", content_type="audio/wav")
    form.add_field("model", "whisper")
    form.add_field("response_format", "json")
    answer = await client.post("/v1/audio/transcriptions", data=form, headers=AUTH)
    assert answer.status == 200, await answer.text()
    upload = fake.uploads[-1]
    assert upload["order"] == ["model", "response_format", "file"]
    assert upload["fields"]["model"] == ["whisper-large-v3"]
    assert upload["file_sha256"] == hashlib.sha256(AUDIO).hexdigest()


async def test_an_upload_is_sent_once_never_retried(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway(MODELS)
    fake.script("transcriptions", "503")
    with pytest.raises(openai.InternalServerError):
        await sdk(client).audio.transcriptions.create(file=("a.wav", AUDIO), model="whisper")
    assert len(fake.uploads) == 1


def _form(fields: dict[str, str], *, file: bytes | None = AUDIO) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        form.add_field(name, value)
    if file is not None:
        form.add_field("file", file, filename="a.wav", content_type="audio/wav")
    return form


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "json"}, "model"),
        ({"model": "whisper", "response_format": "mp4"}, "response_format"),
        ({"model": "whisper", "temperature": "3"}, "temperature"),
        ({"model": "whisper", "language": "english!"}, "language"),
        ({"model": "whisper", "timestamp_granularities[]": "word"}, "timestamp_granularities"),
        (
            {
                "model": "whisper",
                "timestamp_granularities[]": "hour",
                "response_format": "verbose_json",
            },
            "timestamp_granularities",
        ),  # fmt: skip
    ],
)
async def test_a_bad_form_field_is_a_400_naming_it_before_anything_is_sent(
    tollway: Tollway, fake: FakeProvider, fields: dict[str, str], param: str
) -> None:
    client = await tollway(MODELS)
    answer = await client.post("/v1/audio/transcriptions", data=_form(fields), headers=AUTH)
    assert answer.status == 400
    assert (await answer.json())["error"]["param"] == param
    assert fake.uploads == []


async def test_a_form_without_a_file_is_a_400(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway(MODELS)
    answer = await client.post(
        "/v1/audio/transcriptions", data=_form({"model": "whisper"}, file=None), headers=AUTH
    )
    assert answer.status == 400
    assert (await answer.json())["error"]["param"] == "file"


async def test_a_body_that_is_not_a_form_is_a_400(tollway: Tollway) -> None:
    client = await tollway(MODELS)
    answer = await client.post("/v1/audio/transcriptions", json={"model": "whisper"}, headers=AUTH)
    assert answer.status == 400
    assert "multipart/form-data" in (await answer.json())["error"]["message"]


def _send_head(port: int, length: int) -> tuple[bytes, float]:
    """Send a request head declaring `length` bytes and a few of them; what came back."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = (
            "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {USER_KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=b0undary\r\n"
            f"Content-Length: {length}\r\n\r\n--b0undary\r\n"
        )
        started = time.monotonic()
        sock.sendall(head.encode())
        answer = sock.recv(65536)
        return answer, time.monotonic() - started


async def test_an_over_limit_upload_is_refused_with_413_before_it_is_read(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({**MODELS, "server": {"audio_max_bytes": 200_000}})
    answer, _ = await asyncio.to_thread(_send_head, client.server.port, 200_001)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"server.audio_max_bytes" in answer
    assert fake.uploads == []


async def test_the_audio_limit_replaces_the_general_body_limit_on_audio_routes(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({**MODELS, "server": {"max_body_bytes": 100_000}})
    answer = await sdk(client).audio.transcriptions.create(file=("a.wav", AUDIO), model="whisper")
    assert answer.text == TRANSCRIPT  # 1 MiB: over max_body_bytes, under audio_max_bytes


async def _chunks(total: int) -> AsyncIterator[bytes]:
    yield (
        b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    sent = 0
    while sent < total:
        yield AUDIO[:65536]
        sent += 65536
        await asyncio.sleep(0)


async def test_an_over_limit_upload_without_a_length_is_refused_while_it_streams(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({**MODELS, "server": {"audio_max_bytes": 300_000}})
    answer = await client.post(
        "/v1/audio/transcriptions",
        data=_chunks(2_000_000),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert answer.status == 413
    assert "server.audio_max_bytes" in (await answer.json())["error"]["message"]
    await asyncio.sleep(0.1)
    assert fake.uploads == []  # the provider never got a whole upload
    assert (await client.get("/health/live")).status == 200


async def test_audio_routes_are_in_the_openapi_document(tollway: Tollway) -> None:
    client: TestClient = await tollway()
    paths: dict[str, Any] = (await (await client.get("/openapi.json")).json())["paths"]
    upload = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    for path in ("/v1/responses", "/v1/responses/{response_id}", "/openai/v1/responses",
                 "/v1/responses/{response_id}/cancel", "/v1/responses/{response_id}/input_items",
                 "/v1/completions", "/v1/moderations", "/v1/images/generations",
                 "/v1/audio/speech", "/openai/v1/audio/translations"):  # fmt: skip
        assert path in paths, path
    assert set(paths["/v1/responses/{response_id}"]) == {"get", "delete"}
