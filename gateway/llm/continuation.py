"""Finishing a chat stream on another call after it failed mid-answer.

When a stream is cut, stalls or breaks after content reached the client, the answer
goes on from exactly the text the client has, on the model's fallback (or on the same
model again when it has none, or when the fallbacks cannot be reached):

* a model configured with ``prefill: true`` is sent the conversation plus that text as
  a trailing assistant message, and everything it streams is relayed;
* any other model (or one that refuses the prefill with a 4xx) regenerates the answer
  from the start, and only what comes after the client's text is relayed, when the new
  answer begins with that text; an answer that diverges is never shown.

The client sees one answer: one id, one finish reason, one ``[DONE]``, and usage that
sums what every call was billed (for a call cut before its usage arrived, the content
events it sent stand for its completion tokens). Continuing stops at the request's
deadline or after `MAX_CONTINUATIONS` failures; the stream then ends with the in-band
error, never a clean end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from aiohttp import web

from backends.base import CallContext
from gateway.config import config_key
from gateway.errors import BackendError, TollwayError, UpstreamHTTPError
from gateway.llm.model_router import Target
from gateway.llm.sse_relay import StreamState
from gateway.llm.targets import open_target_stream, target_deadline, upstream_stream_options
from gateway.ops.metrics import metrics_key

__all__ = ["MAX_CONTINUATIONS", "Continuer", "Diverged"]

_log = logging.getLogger("tollway.llm")

MAX_CONTINUATIONS: Final = 3


class Diverged(BackendError):
    """A continuation could not be joined to what the client has."""

    default_code = "continuation_failed"
    breaker_failure = False


class _Call:
    """What one upstream call of the answer produced: content events and whether it was
    a prefill of `prefilled` events of earlier text."""

    __slots__ = ("events", "prefilled", "usage_seen")

    def __init__(self, prefilled: int | None) -> None:
        self.events = 0
        self.prefilled = prefilled
        self.usage_seen = False


class Continuer:
    """Resumes one client stream on new upstream calls; see the module docstring."""

    def __init__(
        self,
        request: web.Request,
        body: dict[str, Any],
        targets: list[Target],
        index: int,
        state: StreamState,
        ctx: CallContext,
        deadline: float,
    ) -> None:
        self._request = request
        self._body = body
        self._targets = targets
        self.index = index
        """The target whose call is relayed now."""
        self._state = state
        self._ctx = ctx
        self._deadline = deadline
        self._tries = 0
        self._calls: list[_Call] = []
        self._current: _Call | None = None
        """The call relayed now, when it is a continuation."""

    @property
    def target(self) -> Target:
        return self._targets[self.index]

    def _label(self) -> str:
        name = self._targets[0].name
        return name if name in self._request.app[config_key].models else "other"

    async def resume(
        self, failure: TollwayError
    ) -> tuple[AsyncIterator[list[bytes]], list[bytes]] | None:
        """A new upstream for the rest of the answer and its first (filtered) events, or
        None when the answer cannot go on (the caller ends it with `failure`)."""
        state = self._state
        self._close_call()
        metrics = self._request.app[metrics_key]
        if (
            state.continuable
            and self._tries < MAX_CONTINUATIONS
            and asyncio.get_running_loop().time() < self._deadline
        ):
            self._tries += 1
            for index in self._candidates():
                opened = await self._open(index, failure)
                if opened is not None:
                    return opened
        metrics.stream_continuations.labels(self._label(), "gave_up").inc()
        _log.warning(
            "stream not continued",
            extra={
                "model": self.target.name,
                "error": failure.code,
                "continuable": state.continuable,
            },
        )
        return None

    def _candidates(self) -> list[int]:
        """The fallbacks after the current target, then the current target again."""
        return [*range(self.index + 1, len(self._targets)), self.index]

    async def _open(
        self, index: int, failure: TollwayError
    ) -> tuple[AsyncIterator[list[bytes]], list[bytes]] | None:
        target = self._targets[index]
        have = self._state.text
        ways = ("prefill", "regenerate") if target.prefill and have else ("regenerate",)
        for how in ways:
            if asyncio.get_running_loop().time() >= self._deadline:
                return None
            body = self._upstream_body(target, have if how == "prefill" else None)
            try:
                events, first = await open_target_stream(
                    target, body, self._ctx, target_deadline(target, self._deadline)
                )
            except UpstreamHTTPError as error:
                if how == "prefill" and error.upstream_status < 500:
                    _log.info(
                        "prefill refused",
                        extra={"model": target.name, "error": error.code},
                    )
                    continue  # the model will not continue a message: regenerate
                return None
            except BackendError as error:
                _log.info(
                    "continuation failed to start",
                    extra={"model": target.name, "error": error.code},
                )
                return None
            call = _Call(self._state.content_events if how == "prefill" else None)
            joiner = _Joiner(
                self, self._state, call, have if how == "regenerate" and have else None
            )
            self._current = call
            try:
                first_out = joiner.batch(first)
            except Diverged as error:
                await events.aclose()  # type: ignore[attr-defined]
                _log.info("continuation diverged", extra={"model": target.name, "why": str(error)})
                self._calls.append(call)  # billed all the same
                self._current = None
                return None
            self.index = index
            self._request.app[metrics_key].stream_continuations.labels(self._label(), how).inc()
            _log.warning(
                "stream continued",
                extra={"model": target.name, "how": how, "error": failure.code},
            )
            return joiner.events(events), first_out
        return None

    def _upstream_body(self, target: Target, prefill: str | None) -> dict[str, Any]:
        body = {
            **self._body,
            "model": target.upstream_model,
            "stream_options": upstream_stream_options(self._body),
        }
        if prefill is not None:
            body["messages"] = [*self._body["messages"], {"role": "assistant", "content": prefill}]
            body.update(target.prefill_body)
        return body

    def _close_call(self) -> None:
        """The relayed call failed: remember what it produced, for usage."""
        call = self._current
        if call is None:
            call = _Call(None)
            call.events = self._state.content_events
        if not call.usage_seen:
            self._calls.append(call)
        self._current = None

    def summed_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The final call's usage plus an estimate for each earlier call."""
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        current = self._current
        base = prompt - (current.prefilled or 0) if current is not None else prompt
        base = max(0, base)
        extra_prompt = sum(base + (call.prefilled or 0) for call in self._calls)
        extra_completion = sum(call.events for call in self._calls)
        prompt += extra_prompt
        completion += extra_completion
        return {
            **usage,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


class _Joiner:
    """Rewrites a continuation call's events so they carry on the client's answer."""

    def __init__(self, owner: Continuer, state: StreamState, call: _Call, skip: str | None) -> None:
        self._owner = owner
        self._call = call
        self._skip = skip
        """The text the new answer must begin with before anything is relayed (regenerate);
        None once joined (or for a prefill)."""
        self._at = 0
        self._id = state.first_id
        self._created = state.created

    async def events(self, upstream: AsyncIterator[list[bytes]]) -> AsyncIterator[list[bytes]]:
        try:
            async for batch in upstream:
                out = self.batch(batch)
                if out:
                    yield out
        finally:
            await upstream.aclose()  # type: ignore[attr-defined]

    def batch(self, batch: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for data in batch:
            joined = self._join(data)
            if joined is not None:
                out.append(joined)
        return out

    def _join(self, data: bytes) -> bytes | None:
        if data == b"[DONE]":
            if self._skip is not None:
                raise Diverged("the new answer ended before reaching the text already sent")
            return data
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data  # the relay drops and counts it
        if not isinstance(event, dict):
            return data
        if event.get("error"):
            if self._skip is not None:
                raise Diverged("the continuation failed before reaching the text already sent")
            return data
        choices = event.get("choices")
        if isinstance(choices, list) and choices:
            if not self._choice(choices):
                return None
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._call.usage_seen = True
            event["usage"] = self._owner.summed_usage(usage)
        if self._id is not None:
            event["id"] = self._id
        if self._created is not None:
            event["created"] = self._created
        return orjson.dumps(event)

    def _choice(self, choices: list[Any]) -> bool:
        """Join the first choice's delta; False when the event is to be dropped."""
        choice = choices[0]
        if not isinstance(choice, dict) or len(choices) > 1:
            raise Diverged("the continuation is not a single answer")
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        if delta.get("tool_calls") or delta.get("function_call"):
            raise Diverged("the continuation turned into a tool call")
        delta.pop("role", None)
        content = delta.get("content")
        finish = choice.get("finish_reason")
        if isinstance(content, str) and content:
            self._call.events += 1
            if self._skip is not None:
                rest = self._past_skip(content)
                if rest is None and finish:
                    raise Diverged("the new answer is shorter than the text already sent")
                if not rest:
                    delta.pop("content")
                    if not finish:
                        return False
                else:
                    delta["content"] = rest
        elif self._skip is not None:
            if finish:
                raise Diverged("the new answer is shorter than the text already sent")
            return False
        choice["delta"] = delta
        return bool(finish) or any(value for value in delta.values())

    def _past_skip(self, content: str) -> str | None:
        """The part of `content` past the client's text ("" when it ends exactly there),
        or None while the new answer is still inside that text."""
        skip = self._skip
        assert skip is not None
        left = len(skip) - self._at
        if len(content) < left:
            if not skip.startswith(content, self._at):
                raise Diverged("the new answer differs from the text already sent")
            self._at += len(content)
            return None
        if not content.startswith(skip[self._at :]):
            raise Diverged("the new answer differs from the text already sent")
        self._skip = None
        return content[left:]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
