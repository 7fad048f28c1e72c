"""What a chat stream's relay must know about each event, at the cost of one parse.

The relay passes events through as they come, but it must not lie: it notices the
finish reason, the usage chunk (which it may have asked for on the client's behalf and
then must hide), an upstream error event and a malformed one.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.errors import TollwayError

__all__ = ["DONE_FRAME", "MalformedEvent", "StreamState", "error_frame"]

DONE_FRAME: Final = b"data: [DONE]\n\n"


class MalformedEvent(ValueError):
    """An upstream event that is not a JSON object."""


class StreamState:
    __slots__ = ("client_gone", "done", "failed", "finished", "relayed", "strip_usage", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.finished = False
        """A choice carried a finish reason: the answer is complete."""
        self.done = False
        """``[DONE]`` arrived."""
        self.failed = False
        """The upstream sent an error event."""
        self.client_gone = False
        """A write to the client failed: it hung up."""
        self.usage: dict[str, Any] | None = None
        self.relayed = 0
        """Chunks relayed that carried content: a provider streams about one token per
        chunk, so this stands in for the output tokens of a stream cut before its usage."""

    def frame(self, data: bytes) -> bytes | None:
        """The bytes to send the client for one upstream event, or None to send nothing."""
        if data == b"[DONE]":
            self.done = True
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
        groq = event.get("x_groq")
        if not isinstance(usage, dict) and isinstance(groq, dict):
            usage = groq.get("usage")  # Groq's older place for stream usage
        if isinstance(usage, dict):
            self.usage = usage
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    if choice.get("finish_reason"):
                        self.finished = True
                    delta = choice.get("delta")
                    if isinstance(delta, dict) and (
                        delta.get("content") or delta.get("tool_calls") or delta.get("refusal")
                    ):
                        self.relayed += 1
            if self.strip_usage and not choices and isinstance(event.get("usage"), dict):
                return None
        return b"data: " + data + b"\n\n"

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) as the provider reported them; without a report (a stream
        cut before its usage chunk), no prompt count and the chunks relayed so far."""
        if self.usage is None:
            return 0, self.relayed
        usage = self.usage
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def error_frame(error: TollwayError, request_id: str | None) -> bytes:
    """An in-band error event: the OpenAI SDKs raise `APIError` on reading it."""
    return (
        b"data: "
        + orjson.dumps(
            {
                "error": {
                    "message": error.message,
                    "type": error.type_name,
                    "code": error.code,
                    "param": None,
                    "request_id": request_id,
                }
            }
        )
        + b"\n\n"
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
