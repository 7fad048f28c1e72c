"""Audio: transcriptions and translations (a multipart upload streamed to the provider,
`gateway.llm.audio_upload`) and speech (audio relayed as it arrives, with the provider's
own content type), at ``/v1/audio/...`` and ``/openai/v1/audio/...``.

An upload answers to ``server.audio_max_bytes`` (default 25 MiB) instead of the general
body limit: a declared length over it is refused before a byte is read, and the bytes
are counted as they pass. Its form fields are checked (``model`` required, the
``response_format``, ``temperature``, ``timestamp_granularities[]`` and ``language``
each valid). An upload is sent once: no retry, and a fallback only while none of it
was sent. Usage: the audio seconds the provider reports (``usage.seconds``, or
``duration`` in ``verbose_json``), else the bytes uploaded; speech records the bytes
sent back.
"""

from __future__ import annotations

import re
import time
from contextlib import aclosing
from functools import partial
from typing import Any, Final

import orjson
from aiohttp import web

from backends.base import StreamHead
from gateway.config import config_key
from gateway.edge.body import read_json
from gateway.edge.principal import principal_key
from gateway.errors import BackendError, BadRequest
from gateway.llm.api_usage import (
    audio_seconds_of,
    last_object,
    record_audio,
    record_tokens,
    tokens_of_usage,
)
from gateway.llm.audio_upload import Form, Upload
from gateway.llm.byte_relay import relay_bytes
from gateway.llm.event_relay import open_events
from gateway.llm.model_router import Target
from gateway.llm.multipart import boundary_of
from gateway.llm.routes import llm_router_key
from gateway.llm.targets import call_context, falls_over
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes"]

_FORMATS: Final = {
    "transcriptions": frozenset({"json", "text", "srt", "verbose_json", "vtt", "diarized_json"}),
    "translations": frozenset({"json", "text", "srt", "verbose_json", "vtt"}),
}
_LANGUAGE: Final = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})?$")
_DURATION: Final = re.compile(rb'"duration"\s*:\s*([0-9]+(?:\.[0-9]+)?)')
_HEAD_BYTES: Final = 4096
_TAIL_BYTES: Final = 64 * 1024


def _check_field(kind: str, form: Form, name: str, value: str) -> None:
    """One form field, checked as it arrives; 400 naming it when wrong."""
    if name == "model" and not value.strip():
        raise BadRequest("'model' must be a non-empty string", param="model")
    elif name == "response_format" and value not in _FORMATS[kind]:
        choices = ", ".join(sorted(_FORMATS[kind]))
        raise BadRequest(f"'response_format' must be one of {choices}", param="response_format")
    elif name == "temperature":
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0.0 <= number <= 1.0:
            raise BadRequest("'temperature' must be a number from 0 to 1", param="temperature")
    elif name in ("timestamp_granularities[]", "timestamp_granularities"):
        if value not in ("word", "segment"):
            raise BadRequest(
                "'timestamp_granularities[]' must be word or segment",
                param="timestamp_granularities",
            )
    elif name == "language" and not _LANGUAGE.match(value):
        raise BadRequest("'language' must be an ISO-639-1 code such as en", param="language")
    elif name == "stream" and value not in ("true", "false"):
        raise BadRequest("'stream' must be true or false", param="stream")
    elif name == "url" and not value.startswith(("https://", "http://")):
        raise BadRequest("'url' must be an http(s) URL of the audio", param="url")


def _check_form(form: Form) -> str:
    """The whole form as far as read (the fields before the file); its model."""
    model = form.get("model")
    if model is None:
        raise BadRequest("'model' is required", param="model")
    granular = form.all("timestamp_granularities[]") + form.all("timestamp_granularities")
    if granular and form.get("response_format") != "verbose_json":
        raise BadRequest(
            "'timestamp_granularities[]' needs response_format verbose_json",
            param="timestamp_granularities",
        )
    if form.has_file and form.get("url") is not None:
        raise BadRequest("send either 'file' or 'url', not both", param="url")
    if form.complete and not form.has_file and form.get("url") is None:
        raise BadRequest("'file' is required", param="file")
    return model


async def transcriptions(request: web.Request) -> web.StreamResponse:
    return await _upload(request, "transcriptions")


async def translations(request: web.Request) -> web.StreamResponse:
    return await _upload(request, "translations")


async def _upload(request: web.Request, kind: str) -> web.StreamResponse:
    router = request.app[llm_router_key]
    router.require_served("audio")
    upload = Upload(
        request.content,
        boundary_of(request.headers.get("Content-Type", "")),
        max_bytes=request.app[config_key].server.audio_max_bytes,
        declared_length=request.content_length,
        check_field=partial(_check_field, kind),
    )
    try:
        form = await upload.read_fields()
        model = _check_form(form)
        targets = router.targets(request[principal_key], model, api="audio")
        return await _send(request, upload, targets, f"/audio/{kind}")
    finally:
        upload.close()


async def _send(
    request: web.Request, upload: Upload, targets: list[Target], path: str
) -> web.StreamResponse:
    ctx = call_context(request)
    started = time.perf_counter()
    for index, target in enumerate(targets):
        body, length = upload.body(target.upstream_model)
        relay = target.guard.backend.relay
        items = target.guard.stream(
            partial(
                relay, path, ctx, body=body, content_length=length,
                content_type=request.headers["Content-Type"], idle_timeout=False,
            ),
            first_item_timeout_s=target.guard.config.timeout_s,
            model=target.upstream_model,
            retries=0,
        )  # fmt: skip
        try:
            head = await anext(items)
        except BaseException as exc:
            await items.aclose()  # type: ignore[attr-defined]
            if upload.error is not None:
                raise upload.error from None  # the upload's own fault: too big, malformed
            last = index + 1 == len(targets)
            if not isinstance(exc, BackendError) or upload.started or last or not falls_over(exc):
                raise
            continue
        async with aclosing(items):  # type: ignore[type-var]
            relayed = await relay_bytes(
                request, items, head, target, keep_head=_HEAD_BYTES, keep_tail=_TAIL_BYTES
            )
        _record(request, target, relayed.head, relayed.tail, relayed.sent, upload.form, started)
        return relayed.response
    raise AssertionError("unreachable: targets is never empty")


def _record(
    request: web.Request,
    target: Target,
    head: bytes,
    tail: bytes,
    sent: int,
    form: Form,
    started: float,
) -> None:
    answer: Any = None
    if sent <= len(tail):
        try:
            answer = orjson.loads(tail)
        except orjson.JSONDecodeError:
            answer = None
    if not isinstance(answer, dict):
        usage = last_object(tail, b"usage")
        duration = _DURATION.search(head)
        answer = {"usage": usage, "duration": float(duration.group(1)) if duration else None}
    seconds = audio_seconds_of(answer)
    record_tokens(
        request, target, time.perf_counter() - started, tokens_of_usage(answer.get("usage"))
    )
    record_audio(request, target, seconds=seconds, bytes_in=form.file_bytes, bytes_out=0)


async def speech(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise BadRequest("'input' must be a non-empty string", param="input")
    voice = body.get("voice")
    if not isinstance(voice, str | dict) or not voice:
        raise BadRequest("'voice' must be a voice name or {\"id\": …}", param="voice")
    targets = request.app[llm_router_key].targets(
        request[principal_key], body.get("model"), api="audio"
    )
    ctx = call_context(request)
    accept = request.headers.get("Accept")

    def opener(target: Target) -> Any:
        backend = target.guard.backend
        upstream = orjson.dumps({**body, "model": target.upstream_model})
        return target.guard.stream(
            partial(
                backend.relay, "/audio/speech", ctx, body=upstream,
                content_type="application/json", accept=accept,
            ),
            first_item_timeout_s=backend.first_token_timeout_s,
            model=target.upstream_model,
        )  # fmt: skip

    started = time.perf_counter()
    items, head, target = await open_events(request, targets, opener)
    async with aclosing(items):  # type: ignore[type-var]
        relayed = await relay_bytes(request, items, head, target, keep_tail=_HEAD_BYTES)
    if isinstance(head, StreamHead) and head.content_type.startswith("text/event-stream"):
        usage = tokens_of_usage(last_object(relayed.tail, b"usage"))
        record_tokens(request, target, time.perf_counter() - started, usage)
    record_audio(request, target, seconds=0.0, bytes_in=0, bytes_out=relayed.sent)
    return relayed.response


_UPLOAD_BODY: Final = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["model"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "model": {"type": "string"},
                "language": {"type": "string"},
                "prompt": {"type": "string"},
                "response_format": {"type": "string"},
                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                "timestamp_granularities[]": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["word", "segment"]},
                },
                "url": {"type": "string"},
            },
        }
    }
}
_SPEECH_BODY: Final = {
    "type": "object",
    "required": ["model", "input", "voice"],
    "properties": {
        "model": {"type": "string"},
        "input": {"type": "string"},
        "voice": {"type": ["string", "object"]},
        "instructions": {"type": "string"},
        "response_format": {"type": "string"},
        "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0},
        "stream_format": {"type": "string", "enum": ["sse", "audio"]},
    },
}


def routes() -> list[RouteDef]:
    found: list[RouteDef] = []
    for prefix in ("/v1", "/openai/v1"):
        for kind, handler, summary in (
            ("transcriptions", transcriptions, "Transcribe audio (multipart upload, streamed)"),
            ("translations", translations, "Translate audio into English (multipart upload)"),
        ):
            found.append(
                RouteDef(
                    "POST",
                    f"{prefix}/audio/{kind}",
                    handler,
                    RouteSpec(
                        "audio", "llm", True, summary, body_limit="audio",
                        request_content=_UPLOAD_BODY,
                    ),
                )
            )  # fmt: skip
        found.append(
            RouteDef(
                "POST",
                f"{prefix}/audio/speech",
                speech,
                RouteSpec(
                    "audio", "llm", True, "Speak text (the audio relayed as it arrives)",
                    request_body=_SPEECH_BODY,
                ),
            )
        )  # fmt: skip
    return found
