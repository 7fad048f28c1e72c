"""Fake OpenAI/Groq and Tavily servers, served by aiohttp on 127.0.0.1, that can be told
to fail in each of the ways real providers do.

`FakeProvider.script(kind, *modes)` queues how the next requests of `kind` ("chat",
"embeddings", "search", "extract") are answered; with the queue empty they succeed.
Every request is recorded (path, headers, body) so tests can see what reached upstream.

Chat faults by model and over time (`FakeProvider.script_model`, `fail_times`, `outage`,
`refuse_prefill`, `answer`) and parameterised chat modes for the resilience tests:
``slow-first:S`` (the first event, or a JSON answer, after S seconds), ``slow-token:S``
(the role chunk at once, the first token after S seconds); ``cut-after:N``,
``stall-after:N``, ``clean-cut-after:N``, ``malformed-after:N`` (one junk event after N
tokens, then the stream goes on) and ``junk-after:N`` (junk events, then silence);
``400-filter`` (a content-filter refusal), ``400-context-groq``; ``503-after:S`` and
``429-after:S`` (with ``Retry-After: S``); ``408``, ``409``, ``501``, ``504``; ``diverge``
(a different answer). A stream that uses any of them, or a model with its own answer,
starts with a role chunk as OpenAI's do, counts its tokens in its usage, and continues a
trailing assistant message (prefill) unless the model refuses it.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fake_openai_surface import SurfaceEndpoints

UPSTREAM_KEY = "sk-upstream-0123456789abcdefghij"
TAVILY_KEY = "tvly-upstream-0123456789abcdefghij"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)
    raw: bytes = b""


class FakeProvider(SurfaceEndpoints):
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._scripts: dict[str, deque[str]] = defaultdict(deque)
        self.disconnected = asyncio.Event()
        self.stream_gap_s = 0.0
        self.stream_pieces: list[str] = ["Hel", "lo", " there"]
        """The content deltas of a streamed answer, one event each (`stream_gap_s` apart)."""
        self.first_event_delay_s = 2.0
        self.hang_s = 30.0
        self.slow_s = 0.3
        self._model_scripts: dict[str, deque[str]] = defaultdict(deque)
        self._outages: list[tuple[str, float, float, str]] = []
        self._answers: dict[str, list[str]] = {}
        self._prefill_refused: set[str] = set()
        self.huge_bytes = 100 * 1024 * 1024
        self.huge_sent = 0

    def script(self, kind: str, *modes: str) -> None:
        self._scripts[kind].extend(modes)

    def hits(self, kind: str) -> int:
        suffix = {"chat": "/chat/completions", "embeddings": "/embeddings"}.get(kind, f"/{kind}")
        return sum(1 for s in self.seen if s.path.endswith(suffix))

    def _next(self, kind: str) -> str:
        queue = self._scripts[kind]
        return queue.popleft() if queue else "ok"

    def app(self) -> web.Application:
        app = web.Application()
        for prefix in ("/v1", "/openai/v1"):
            app.router.add_post(f"{prefix}/chat/completions", self.chat)
            app.router.add_post(f"{prefix}/embeddings", self.embeddings)
            app.router.add_get(f"{prefix}/models", self.models)
        app.router.add_post("/search", self.search)
        app.router.add_post("/extract", self.extract)
        self.surface_routes(app)
        return app

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.seen.append(Seen(request.path, dict(request.headers), body, raw=raw))
        return body

    async def _common_failure(self, request: web.Request, mode: str) -> web.StreamResponse | None:
        if mode in ("500", "502", "503"):
            return _error(int(mode), "upstream is having a bad day", "server_error", None)
        if mode == "429":
            return _error(
                429, "Rate limit reached", "rate_limit_error", "rate_limit_exceeded",
                headers={"retry-after-ms": "50", "Retry-After": "1"},
            )  # fmt: skip
        if mode == "429-long":
            return _error(
                429, "Rate limit reached", "rate_limit_error", "rate_limit_exceeded",
                headers={"Retry-After": "600"},
            )  # fmt: skip
        if mode == "429-bare":
            return _error(429, "Rate limit reached", "rate_limit_error", "rate_limit_exceeded")
        if mode == "400-context":
            return _error(
                400,
                "This model's maximum context length is 8192 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
                param="messages",
            )
        if mode == "401":
            return _error(401, f"Incorrect API key provided: {UPSTREAM_KEY[:8]}****",
                          "invalid_request_error", "invalid_api_key")  # fmt: skip
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # never sent: the connection is gone
        if mode == "hang":
            await asyncio.sleep(self.hang_s)
        if mode == "slow":
            await asyncio.sleep(self.slow_s)  # then answer normally
        return await self._more_failures(request, mode)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
            return _error(401, "bad upstream key", "invalid_request_error", "invalid_api_key")
        mode = self._chat_mode(body)
        failed = await self._common_failure(request, mode)
        if failed is not None:
            return failed
        refused = self._prefill_refusal(body)
        if refused is not None:
            return refused
        if mode.startswith("slow-first:") and not body.get("stream"):
            await asyncio.sleep(float(mode.partition(":")[2]))  # a JSON answer's first byte
        if body.get("stream") and self._answers_by_tokens(body, mode):
            return await self._stream_tokens(request, body, mode)
        if mode == "huge":
            return await self._huge(request)
        if body.get("stream"):
            return await self._stream(request, body, mode)
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1700000000,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self._json_text(body, mode)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            },
            headers={"x-request-id": "upstream-req", "openai-processing-ms": "3"},
        )

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        """A JSON answer of `huge_bytes`, written a megabyte at a time without a length;
        `huge_sent` says how much went out before the reader hung up."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self.huge_sent = 0
        piece = b'{"choices": [{"message": {"content": "' + b"x" * (1024 * 1024)
        try:
            while self.huge_sent < self.huge_bytes:
                await response.write(piece)
                self.huge_sent += len(piece)
            await response.write(b'"}}]}')
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
        return response

    async def _stream(self, request: web.Request, body: Any, mode: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if mode == "slow-first":
                await asyncio.sleep(self.first_event_delay_s)
            for index, piece in enumerate(self.stream_pieces):
                if mode == "malformed" and index == 1:
                    await response.write(b"data: {not json\n\n")
                    continue
                if mode == "cut" and index == 2:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if mode == "stall" and index == 2:
                    await asyncio.sleep(self.hang_s)
                if mode == "clean-cut" and index == 2:
                    await response.write_eof()
                    return response
                if mode == "error-event" and index == 1:
                    await response.write(b'data: {"error": {"message": "overloaded"}}\n\n')
                    await response.write_eof()
                    return response
                chunk = _chunk(body["model"], {"content": piece}, None)
                if mode == "crlf-split":
                    # CRLF line ends, a comment, an event name, and each event cut
                    # across two network writes
                    chunk = b": keep-alive\r\n\r\nevent: message\r\n" + chunk.replace(
                        b"\n", b"\r\n"
                    )
                    await response.write(chunk[:20])
                    await asyncio.sleep(0.02)
                    chunk = chunk[20:]
                await response.write(chunk)
                if self.stream_gap_s:
                    await asyncio.sleep(self.stream_gap_s)
            await response.write(_chunk(body["model"], {}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
                await response.write(
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion.chunk",
                            "created": 1700000000,
                            "model": body["model"],
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + b"\n\n"
                )
            if mode != "no-done":
                await response.write(b"data: [DONE]\n\n")
            if mode == "linger":
                await asyncio.sleep(self.hang_s)  # [DONE] sent, the answer never ends
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        failed = await self._common_failure(request, self._next("embeddings"))
        if failed is not None:
            return failed
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.25, -0.5, 1.0]}
                    for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "up-model", "object": "model", "created": 1, "owned_by": "fake"}],
            }  # fmt: skip
        )

    async def search(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if request.headers.get("Authorization") != f"Bearer {TAVILY_KEY}":
            return web.json_response({"detail": {"error": "Unauthorized: bad key"}}, status=401)
        mode = self._next("search")
        if mode == "429":
            return web.json_response(
                {"detail": {"error": "Your request has been rate limited."}}, status=429
            )
        if mode == "500":
            return web.json_response({"detail": {"error": "internal"}}, status=500)
        return web.json_response(
            {
                "query": body["query"],
                "answer": None,
                "images": None,
                "results": [
                    {
                        "title": "Tollway",
                        "url": "https://example.com/",
                        "content": "A gateway.",
                        "score": 0.9,
                        "raw_content": None,
                    }  # fmt: skip
                ],
                "response_time": 0.01,
                "request_id": "tvly-req",
            }
        )

    async def extract(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        urls = body["urls"] if isinstance(body["urls"], list) else [body["urls"]]
        return web.json_response(
            {
                "results": [{"url": u, "raw_content": "text of the page"} for u in urls],
                "response_time": 0.01,
            }  # fmt: skip
        )

    # --- faults by model, over time, and by token ---------------------------------

    def script_model(self, model: str, *modes: str) -> None:
        """Queue how the next chat requests for `model` are answered (before `script`'s)."""
        self._model_scripts[model].extend(modes)

    def fail_times(self, n: int, mode: str = "500", *, model: str | None = None) -> None:
        """The next `n` chat requests (for `model`, if given) fail with `mode`, then succeed."""
        if model is None:
            self.script("chat", *[mode] * n)
        else:
            self.script_model(model, *[mode] * n)

    def outage(self, model: str, seconds: float, mode: str = "503", start_in: float = 0.0) -> None:
        """Chat requests for `model` fail with `mode` for `seconds`, from `start_in` on."""
        start = time.monotonic() + start_in
        self._outages.append((model, start, start + seconds, mode))

    def answer(self, model: str, tokens: list[str]) -> None:
        """`model` answers with these tokens (streamed one event each)."""
        self._answers[model] = list(tokens)

    def refuse_prefill(self, model: str) -> None:
        """`model` answers 400 to a conversation that ends with an assistant message."""
        self._prefill_refused.add(model)

    def forget_scripts(self) -> None:
        """Drop every queued mode (by kind and by model) and every outage."""
        self._scripts.clear()
        self._model_scripts.clear()
        self._outages.clear()

    def hits_for(self, model: str) -> int:
        return sum(
            1
            for s in self.seen
            if s.path.endswith("/chat/completions") and (s.body or {}).get("model") == model
        )

    def tokens_of(self, model: str) -> list[str]:
        return self._answers.get(model, ["Hel", "lo", " there"])

    def _chat_mode(self, body: Any) -> str:
        model = body.get("model") if isinstance(body, dict) else None
        now = time.monotonic()
        for name, start, end, mode in self._outages:
            if name == model and start <= now < end:
                return mode
        queue = self._model_scripts.get(model) if isinstance(model, str) else None
        if queue:
            return queue.popleft()
        return self._next("chat")

    async def _more_failures(self, request: web.Request, mode: str) -> web.Response | None:
        kind, _, arg = mode.partition(":")
        if kind == "400-filter":
            return _error(
                400,
                "The response was filtered due to the prompt triggering the content policy.",
                "invalid_request_error",
                "content_filter",
                param="prompt",
            )
        if kind == "400-context-groq":
            return _error(
                400, "Please reduce the length of the messages or completion.",
                "invalid_request_error", "context_length_exceeded", param="messages",
            )  # fmt: skip
        if kind in ("503-after", "429-after"):
            return _error(
                int(kind[:3]), "overloaded", "server_error", None,
                headers={"Retry-After": arg or "1"},
            )  # fmt: skip
        if kind in ("408", "409", "501", "504"):
            return _error(int(kind), f"upstream said {kind}", "server_error", None)
        return None

    def _prefill_refusal(self, body: Any) -> web.Response | None:
        messages = body.get("messages") if isinstance(body, dict) else None
        if (
            isinstance(messages, list)
            and messages
            and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "assistant"
            and body.get("model") in self._prefill_refused
        ):
            return _error(
                400,
                "The last message must be a user or tool message.",
                "invalid_request_error",
                "invalid_request",
                param="messages",
            )
        return None

    def _answers_by_tokens(self, body: Any, mode: str) -> bool:
        messages = body.get("messages") or []
        prefill = bool(messages) and isinstance(messages[-1], dict)
        prefill = prefill and messages[-1].get("role") == "assistant"
        return ":" in mode or mode == "diverge" or body.get("model") in self._answers or prefill

    def _json_text(self, body: Any, mode: str) -> str:
        model = body.get("model")
        if mode == "diverge":
            return "Something else entirely"
        if model in self._answers:
            return "".join(self._answers[model])
        return "Hello from the fake"

    def _tokens_for(self, body: Any, mode: str) -> tuple[list[str], int]:
        """The tokens to stream for `body`, and how many prefill tokens it carried."""
        tokens = self.tokens_of(body["model"])
        if mode == "diverge":
            tokens = ["Some", "thing", " else"]
        messages = body.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            return tokens, 0
        prefix = last["content"]
        full = "".join(tokens)
        if not full.startswith(prefix):
            return tokens, 0
        at = 0
        for index, token in enumerate(tokens):
            if at + len(token) > len(prefix):
                return [token[len(prefix) - at :], *tokens[index + 1 :]], index
            at += len(token)
        return [], len(tokens)

    async def _stream_tokens(self, request: web.Request, body: Any, mode: str) -> web.Response:
        kind, _, arg = mode.partition(":")
        tokens, prefilled = self._tokens_for(body, mode)
        model = body["model"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if kind == "slow-first":
                await asyncio.sleep(float(arg or self.first_event_delay_s))
            await response.write(_chunk(model, {"role": "assistant", "content": ""}, None))
            if kind == "slow-token":  # the role at once, the first token late
                await asyncio.sleep(float(arg))
            at = int(arg) if arg and kind.endswith("-after") else -1
            for index, piece in enumerate(tokens):
                if index == at:
                    if kind == "cut-after":
                        assert request.transport is not None
                        request.transport.abort()
                        return response
                    if kind == "stall-after":
                        await asyncio.sleep(self.hang_s)
                    if kind == "clean-cut-after":
                        await response.write_eof()
                        return response
                    if kind == "malformed-after":
                        await response.write(b'data: {"id": "chatcmpl-fake", "choi\n\n')
                    if kind == "junk-after":  # nothing but junk from here on, for a while
                        await response.write(b"data: <html>bad gateway</html>\n\n" * 3)
                        await asyncio.sleep(self.hang_s)
                await response.write(_chunk(model, {"content": piece}, None))
                if self.stream_gap_s:
                    await asyncio.sleep(self.stream_gap_s)
            await response.write(_chunk(model, {}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": 4 + prefilled,
                    "completion_tokens": len(tokens),
                    "total_tokens": 4 + prefilled + len(tokens),
                }
                event = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    event = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status=status,
        headers=headers,
    )
