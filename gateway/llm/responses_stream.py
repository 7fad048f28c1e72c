"""What the relay must know about each event of a Responses stream, at one parse each.

A Responses stream has ``event:`` lines, a ``sequence_number`` on every event and no
``[DONE]``: it is complete when a terminal event went by (``response.completed``,
``response.incomplete`` or ``response.failed``). Its usage is in the terminal event's
``response.usage``. The response id is known from ``response.created`` on, and is never
rewritten (the SDKs check it stays the same).

A failure Tollway reports in-band is the API's own ``error`` event, carrying both the
documented flat fields and the nested ``error`` object real OpenAI streams send (the
openai SDK raises `APIError` only on the nested form), then a ``response.failed`` with
the response as far as it was known, so clients waiting for a terminal event get one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from gateway.errors import TollwayError
from gateway.llm.api_usage import TokenUsage, tokens_of_usage
from gateway.llm.event_relay import MalformedEvent

__all__ = ["TERMINAL", "ResponsesState"]

TERMINAL: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesState:
    __slots__ = (
        "complete", "ended", "failed", "on_created", "response", "sequence", "usage",
    )  # fmt: skip

    def __init__(self, on_created: Callable[[dict[str, Any]], object] | None = None) -> None:
        self.ended = False
        self.complete = False
        self.failed = False
        self.usage = TokenUsage()
        self.sequence = -1
        """The last ``sequence_number`` seen."""
        self.response: dict[str, Any] | None = None
        """The response object as the last lifecycle event described it."""
        self.on_created = on_created

    def frame(self, data: bytes) -> bytes | None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedEvent("the upstream sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise MalformedEvent("the upstream sent an event that is not a JSON object")
        kind = event.get("type")
        sequence = event.get("sequence_number")
        if isinstance(sequence, int) and sequence > self.sequence:
            self.sequence = sequence
        if isinstance(kind, str) and kind.startswith("response."):
            response = event.get("response")
            if isinstance(response, dict):
                if self.response is None and self.on_created is not None:
                    self.on_created(response)
                self.response = response
            if kind in TERMINAL:
                self.ended = self.complete = True
                self.failed = self.failed or kind == "response.failed"
                if isinstance(response, dict):
                    self.usage = tokens_of_usage(response.get("usage"))
        elif kind == "error":
            self.failed = True
        if isinstance(kind, str) and kind.isascii() and kind.isprintable():
            return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        return b"data: " + data + b"\n\n"

    def finish(self) -> bytes:
        return b""

    def error_frames(self, error: TollwayError, request_id: str | None) -> bytes:
        self.sequence += 1
        inner = {
            "type": error.type_name,
            "code": error.code,
            "message": error.message,
            "param": None,
            "request_id": request_id,
        }
        frames = _event(
            {
                "type": "error",
                "code": error.code,
                "message": error.message,
                "param": None,
                "sequence_number": self.sequence,
                "error": inner,
            }
        )
        if self.response is not None:
            self.sequence += 1
            failed = {
                **self.response,
                "status": "failed",
                "error": {"code": error.code, "message": error.message},
            }
            frames += _event(
                {"type": "response.failed", "sequence_number": self.sequence, "response": failed}
            )
        return frames


def _event(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
