"""What the relay must know about each event of a legacy completions stream.

The same wire as chat: ``data:`` chunks, a finish reason on the last choice, an optional
usage chunk (``choices: []``) and ``data: [DONE]``. Tollway asks for the usage chunk on
the client's behalf to count tokens, and hides it again from a client that did not ask.
An upstream that forgets ``[DONE]`` after a finished answer gets it added; a failure
ends with the error event the SDKs raise on (``{"error": {…}}``).
"""

from __future__ import annotations

from typing import Final

import orjson

from gateway.errors import TollwayError
from gateway.llm.api_usage import TokenUsage, tokens_of_usage
from gateway.llm.event_relay import MalformedEvent

__all__ = ["CompletionsState"]

DONE_FRAME: Final = b"data: [DONE]\n\n"


class CompletionsState:
    __slots__ = ("complete", "ended", "failed", "strip_usage", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.ended = False
        self.complete = False
        self.failed = False
        self.usage = TokenUsage()

    def frame(self, data: bytes) -> bytes | None:
        if data == b"[DONE]":
            self.ended = True
            return DONE_FRAME
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedEvent("the upstream sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise MalformedEvent("the upstream sent an event that is not a JSON object")
        if event.get("error"):
            self.failed = True
            return b"data: " + data + b"\n\n"
        choices = event.get("choices")
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.usage = tokens_of_usage(usage)
        if isinstance(choices, list):
            if any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
                self.complete = True
            if self.strip_usage and not choices and isinstance(usage, dict):
                return None
        return b"data: " + data + b"\n\n"

    def finish(self) -> bytes:
        return DONE_FRAME

    def error_frames(self, error: TollwayError, request_id: str | None) -> bytes:
        body = {
            "error": {
                "message": error.message,
                "type": error.type_name,
                "code": error.code,
                "param": None,
                "request_id": request_id,
            }
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"
