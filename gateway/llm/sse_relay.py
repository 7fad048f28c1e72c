"""What a chat stream's relay must know about each event, at the cost of one parse.

The relay passes events through as they come, but it must not lie: it notices the
finish reason, the usage chunk (which it may have asked for on the client's behalf and
then must hide), an upstream error event and a malformed one (dropped and counted: a
stream that goes on after it is fine, one that sends nothing else valid has failed). It
also keeps the text the client has been sent, so that a stream cut mid-answer can be
continued from exactly there (`gateway.llm.continuation`).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from gateway.errors import TollwayError

__all__ = [
    "DONE_FRAME",
    "MALFORMED_IN_A_ROW",
    "MalformedEvent",
    "StreamState",
    "carries_token",
    "error_frame",
]

DONE_FRAME: Final = b"data: [DONE]\n\n"
MALFORMED_IN_A_ROW: Final = 3
"""Malformed events in a row after which a stream counts as broken, not merely noisy."""


class MalformedEvent(ValueError):
    """An upstream event that is not a JSON object."""


class StreamState:
    __slots__ = (
        "_text", "client_gone", "content_events", "continuable", "created", "done", "failed",
        "finished", "first_id", "malformed", "malformed_run", "strip_usage", "usage",
    )  # fmt: skip

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
        self.malformed = 0
        """Events dropped because they were not JSON objects."""
        self.malformed_run = 0
        """Malformed events since the last good one."""
        self._text: list[str] = []
        self.content_events = 0
        """Events that carried content for the client (about one token each)."""
        self.continuable = True
        """Whether what the client has is plain text another call can carry on from (no
        tool calls, a single choice)."""
        self.first_id: object = None
        self.created: object = None

    @property
    def text(self) -> str:
        """The content the client has been sent so far."""
        return "".join(self._text)

    def frame(self, data: bytes) -> bytes | None:
        """The bytes to send the client for one upstream event, or None to send nothing."""
        if data == b"[DONE]":
            self.done = True
            return DONE_FRAME
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            self.malformed += 1
            self.malformed_run += 1
            return None
        self.malformed_run = 0
        if event.get("error"):
            self.failed = True
            return b"data: " + data + b"\n\n"
        if self.first_id is None:
            self.first_id = event.get("id")
            self.created = event.get("created")
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
                    self._read_choice(choice)
            if self.strip_usage and not choices and isinstance(event.get("usage"), dict):
                return None
        return b"data: " + data + b"\n\n"

    def _read_choice(self, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason"):
            self.finished = True
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        content = delta.get("content")
        if content and isinstance(content, str):
            self._text.append(content)
            self.content_events += 1
        if (
            choice.get("index", 0) != 0
            or delta.get("tool_calls")
            or delta.get("function_call")
            or delta.get("refusal")
        ):
            self.continuable = False

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) as the provider reported them; without a report (a stream
        cut before its usage chunk), no prompt count and the chunks relayed so far."""
        if self.usage is None:
            return 0, self.content_events
        usage = self.usage
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def carries_token(batch: list[bytes]) -> bool:
    """Whether these events hold more than a preamble (OpenAI's first chunk carries only
    the role and an empty content): content, reasoning, a tool call, a finish reason, an
    error, usage or the end. Anything unreadable counts: the relay judges it."""
    for data in batch:
        if data == b"[DONE]":
            return True
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(event, dict) or event.get("error") or event.get("usage"):
            return True
        choices = event.get("choices")
        if not isinstance(choices, list):
            return True
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("finish_reason"):
                return True
            delta = choice.get("delta")
            if not isinstance(delta, dict) or any(v for k, v in delta.items() if k != "role"):
                return True
    return False


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
