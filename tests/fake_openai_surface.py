"""The rest of the OpenAI surface on the fake provider: the Responses API (JSON, its full
event stream, and stored responses), legacy completions, moderations, images, audio
transcriptions/translations (the upload read as it streams, counted, never kept) and
speech (audio bytes sent in pieces).

Mixed into `FakeProvider`, so `script(kind, *modes)` and `seen` work for these too; the
kinds are "responses", "completions", "moderations", "images", "transcriptions",
"translations" and "speech". The answers are constants below, so tests can compare.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from typing import Any

import orjson
from aiohttp import web

RESPONSE_TEXT = "Hello from the fake Responses API"
RESPONSE_DELTAS = ["Hello", " from", " the", " fake", " Responses", " API"]
RESPONSE_USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 20,
}
COMPLETION_PIECES = ["Once", " upon", " a", " time"]
TRANSCRIPT = "the quick brown fox"
SPEECH_BYTES = bytes(range(256)) * 800  # 200 KiB, every byte value
IMAGE_B64 = "iVBORw0KGgo" + "A" * 4000


class SurfaceEndpoints:
    """Handlers for the fake; `FakeProvider` supplies `_record`, `_next`, `_common_failure`."""

    seen: list[Any]
    hang_s: float

    def surface_routes(self, app: web.Application) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.uploads: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        for prefix in ("/v1", "/openai/v1"):
            app.router.add_post(f"{prefix}/responses", self.responses)
            app.router.add_get(f"{prefix}/responses/{{id}}", self.retrieve_response)
            app.router.add_delete(f"{prefix}/responses/{{id}}", self.delete_response)
            app.router.add_post(f"{prefix}/responses/{{id}}/cancel", self.cancel_response)
            app.router.add_get(f"{prefix}/responses/{{id}}/input_items", self.input_items)
            app.router.add_post(f"{prefix}/completions", self.completions)
            app.router.add_post(f"{prefix}/moderations", self.moderations)
            app.router.add_post(f"{prefix}/images/generations", self.images)
            app.router.add_post(f"{prefix}/audio/transcriptions", self.transcriptions)
            app.router.add_post(f"{prefix}/audio/translations", self.transcriptions)
            app.router.add_post(f"{prefix}/audio/speech", self.speech)

    # --- Responses ------------------------------------------------------------------------

    def _response(self, body: dict[str, Any], status: str, output: list[Any]) -> dict[str, Any]:
        response_id = f"resp_fake{next(self._ids):04d}"
        return {
            "id": response_id,
            "object": "response",
            "created_at": 1700000000,
            "status": status,
            "model": body.get("model"),
            "output": output,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "tool_choice": "auto",
            "tools": [],
            "text": {"format": {"type": "text"}},
            "usage": None,
            "store": body.get("store", True),
            "background": body.get("background", False),
        }

    @staticmethod
    def _message(text: str, status: str = "completed") -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content if status == "completed" else [],
        }

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)  # type: ignore[attr-defined]
        mode = self._next("responses")  # type: ignore[attr-defined]
        failed = await self._common_failure(request, mode)  # type: ignore[attr-defined]
        if failed is not None:
            return failed
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return _error(
                400, f"Previous response with id '{previous}' not found.",
                "invalid_request_error", "previous_response_not_found", "previous_response_id",
            )  # fmt: skip
        if body.get("stream"):
            return await self._response_stream(request, body, mode)
        if body.get("background"):
            answer = self._response(body, "queued", [])
        else:
            answer = self._response(body, "completed", [self._message(RESPONSE_TEXT)])
            answer["usage"] = RESPONSE_USAGE
        if body.get("store", True) is not False:
            self.stored[answer["id"]] = answer
        return web.json_response(answer)

    async def _response_stream(
        self, request: web.Request, body: dict[str, Any], mode: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        state = self._response(body, "in_progress", [])
        sequence = itertools.count()

        async def send(event: dict[str, Any]) -> None:
            event = {**event, "sequence_number": next(sequence)}
            await response.write(
                f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"
            )

        if body.get("store", True) is not False:
            self.stored[state["id"]] = state
        await send({"type": "response.created", "response": state})
        await send({"type": "response.in_progress", "response": state})
        item = self._message("", "in_progress")
        await send({"type": "response.output_item.added", "output_index": 0, "item": item})
        where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        await send({"type": "response.content_part.added", **where, "part": part})
        for index, delta in enumerate(RESPONSE_DELTAS):
            if index == 3 and mode in ("cut", "stall", "malformed", "clean-cut", "error-event"):
                return await self._fail_stream(request, response, mode, send, state)
            await send({"type": "response.output_text.delta", **where, "delta": delta,
                        "logprobs": []})  # fmt: skip
        await send({"type": "response.output_text.done", **where, "text": RESPONSE_TEXT,
                    "logprobs": []})  # fmt: skip
        part = {"type": "output_text", "text": RESPONSE_TEXT, "annotations": []}
        await send({"type": "response.content_part.done", **where, "part": part})
        item = self._message(RESPONSE_TEXT)
        await send({"type": "response.output_item.done", "output_index": 0, "item": item})
        final = {**state, "status": "completed", "output": [item], "usage": RESPONSE_USAGE}
        self.stored[state["id"]] = final
        await send({"type": "response.completed", "response": final})
        await response.write_eof()
        return response

    async def _fail_stream(
        self, request: web.Request, response: web.StreamResponse, mode: str, send: Any,
        state: dict[str, Any],
    ) -> web.StreamResponse:  # fmt: skip
        if mode == "cut":
            assert request.transport is not None
            request.transport.abort()
        elif mode == "stall":
            await asyncio.sleep(self.hang_s)
        elif mode == "malformed":
            await response.write(b"event: response.output_text.delta\ndata: {not json\n\n")
            await response.write_eof()
        elif mode == "clean-cut":
            await response.write_eof()
        elif mode == "error-event":
            error = {"type": "server_error", "code": "server_error", "message": "overloaded",
                     "param": None}  # fmt: skip
            await send({"type": "error", "error": error})
            failed = {**state, "status": "failed", "error": {"code": "server_error",
                                                              "message": "overloaded"}}  # fmt: skip
            await send({"type": "response.failed", "response": failed})
            await response.write_eof()
        return response

    async def _stored(self, request: web.Request) -> dict[str, Any] | web.Response:
        self.seen.append(_seen(request))
        found = self.stored.get(request.match_info["id"])
        if found is None:
            return _error(404, f"Response with id '{request.match_info['id']}' not found.",
                          "invalid_request_error", None, None)  # fmt: skip
        return found

    async def retrieve_response(self, request: web.Request) -> web.StreamResponse:
        found = await self._stored(request)
        if isinstance(found, web.Response):
            return found
        if request.query.get("stream") != "true":
            return web.json_response(found)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # a replay of a finished response: its last events
        after = int(request.query.get("starting_after", "-1"))
        for number, kind in enumerate(("response.created", "response.completed")):
            if number > after:
                event = {"type": kind, "sequence_number": number, "response": found}
                await response.write(
                    f"event: {kind}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"
                )
        await response.write_eof()
        return response

    async def delete_response(self, request: web.Request) -> web.StreamResponse:
        found = await self._stored(request)
        if isinstance(found, web.Response):
            return found
        del self.stored[found["id"]]
        return web.json_response({"id": found["id"], "object": "response", "deleted": True})

    async def cancel_response(self, request: web.Request) -> web.StreamResponse:
        found = await self._stored(request)
        if isinstance(found, web.Response):
            return found
        found["status"] = "cancelled"
        return web.json_response(found)

    async def input_items(self, request: web.Request) -> web.StreamResponse:
        found = await self._stored(request)
        if isinstance(found, web.Response):
            return found
        item = {"id": "msg_in", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": "hi"}]}  # fmt: skip
        return web.json_response(
            {
                "object": "list",
                "data": [item],
                "first_id": "msg_in",
                "last_id": "msg_in",
                "has_more": False,
            }  # fmt: skip
        )

    # --- legacy completions, moderations, images -----------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)  # type: ignore[attr-defined]
        mode = self._next("completions")  # type: ignore[attr-defined]
        failed = await self._common_failure(request, mode)  # type: ignore[attr-defined]
        if failed is not None:
            return failed
        usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        if not body.get("stream"):
            return web.json_response(
                _completion(body["model"], "".join(COMPLETION_PIECES), "stop", usage)
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, piece in enumerate(COMPLETION_PIECES):
            if mode == "cut" and index == 2:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(_data(_completion(body["model"], piece, None, None)))
        await response.write(_data(_completion(body["model"], "", "stop", None)))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = _completion(body["model"], "", None, usage)
            chunk["choices"] = []
            await response.write(_data(chunk))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)  # type: ignore[attr-defined]
        failed = await self._common_failure(request, self._next("moderations"))  # type: ignore[attr-defined]
        if failed is not None:
            return failed
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        results = [
            {
                "flagged": "kill" in str(text),
                "categories": {"violence": "kill" in str(text), "hate": False},
                "category_scores": {
                    "violence": 0.9 if "kill" in str(text) else 0.01,
                    "hate": 0.001,
                },  # fmt: skip
                "category_applied_input_types": {"violence": ["text"], "hate": ["text"]},
            }
            for text in inputs
        ]
        return web.json_response(
            {"id": "modr-fake", "model": body.get("model"), "results": results}
        )

    async def images(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)  # type: ignore[attr-defined]
        mode = self._next("images")  # type: ignore[attr-defined]
        failed = await self._common_failure(request, mode)  # type: ignore[attr-defined]
        if failed is not None:
            return failed
        count = body.get("n") or 1
        answer = {
            "created": 1700000000,
            "data": [{"b64_json": IMAGE_B64, "revised_prompt": body["prompt"]}] * count,
            "size": body.get("size", "1024x1024"),
            "usage": {
                "input_tokens": 10,
                "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
                "output_tokens": 272 * count,
                "total_tokens": 10 + 272 * count,
            },  # fmt: skip
        }
        raw = orjson.dumps(answer)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(raw)
        await response.prepare(request)
        for start in range(0, len(raw), 1024):
            if mode == "cut" and start >= len(raw) // 2:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(raw[start : start + 1024])
        await response.write_eof()
        return response

    # --- audio ------------------------------------------------------------------------------

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        """Reads the upload part by part as it streams, keeping only its size and digest."""
        kind = request.path.rsplit("/", 1)[-1]
        mode = self._next(kind)  # type: ignore[attr-defined]
        fields: dict[str, list[str]] = {}
        upload = {"path": request.path, "headers": dict(request.headers), "fields": fields,
                  "file_bytes": 0, "file_name": None, "order": []}  # fmt: skip
        reader = await request.multipart()
        async for part in reader:
            upload["order"].append(part.name)  # type: ignore[union-attr,attr-defined]
            if part.filename:  # type: ignore[union-attr]
                digest = hashlib.sha256()
                upload["file_name"] = part.filename  # type: ignore[union-attr]
                while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
                    digest.update(chunk)
                    upload["file_bytes"] += len(chunk)
                upload["file_sha256"] = digest.hexdigest()
            else:
                fields.setdefault(part.name or "", []).append(await part.text())  # type: ignore[union-attr]
        self.uploads.append(upload)
        failed = await self._common_failure(request, mode)  # type: ignore[attr-defined]
        if failed is not None:
            return failed
        fmt = (fields.get("response_format") or ["json"])[0]
        if fmt in ("text", "srt", "vtt"):
            return web.Response(text=TRANSCRIPT + "\n", content_type="text/plain")
        if fmt == "verbose_json":
            return web.json_response(
                {
                    "task": "transcribe",
                    "language": "english",
                    "duration": 12.5,
                    "text": TRANSCRIPT,
                    "segments": [],
                }  # fmt: skip
            )
        if mode == "tokens":
            return web.json_response(
                {
                    "text": TRANSCRIPT,
                    "usage": {
                        "type": "tokens",
                        "input_tokens": 14,
                        "output_tokens": 5,
                        "total_tokens": 19,
                    },
                }  # fmt: skip
            )
        if mode == "no-usage":
            return web.json_response({"text": TRANSCRIPT})
        return web.json_response({"text": TRANSCRIPT, "usage": {"type": "duration", "seconds": 42}})

    async def speech(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)  # type: ignore[attr-defined]
        mode = self._next("speech")  # type: ignore[attr-defined]
        failed = await self._common_failure(request, mode)  # type: ignore[attr-defined]
        if failed is not None:
            return failed
        kind = {"mp3": "audio/mpeg", "opus": "audio/ogg", "flac": "audio/flac",
                "wav": "audio/wav", "aac": "audio/aac", "pcm": "audio/pcm"}  # fmt: skip
        response = web.StreamResponse(
            headers={"Content-Type": kind.get(body.get("response_format", "mp3"), "audio/mpeg")}
        )
        await response.prepare(request)
        for start in range(0, len(SPEECH_BYTES), 16 * 1024):
            if mode == "cut" and start >= len(SPEECH_BYTES) // 2:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(SPEECH_BYTES[start : start + 16 * 1024])
            await asyncio.sleep(0)
        await response.write_eof()
        return response


def _completion(
    model: str, text: str, finish: str | None, usage: dict[str, int] | None
) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 1700000000,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


def _data(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _seen(request: web.Request) -> Any:
    from tests.fake_providers import Seen

    return Seen(request.path, dict(request.headers), dict(request.query))


def _error(
    status: int, message: str, type_: str, code: str | None, param: str | None
) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status=status
    )
