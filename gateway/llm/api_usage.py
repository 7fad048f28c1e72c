"""What a call of the wider OpenAI surface used, read from the provider's own figures and
put on the request's usage record and the metrics: tokens with their cached and reasoning
parts (Responses, completions, images), audio seconds (else bytes), images and their size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web

from gateway.edge.principal import principal_key
from gateway.llm.model_router import Target
from gateway.llm.usage import record_usage
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import usage_key

__all__ = [
    "TokenUsage",
    "audio_seconds_of",
    "last_object",
    "record_audio",
    "record_images",
    "record_tokens",
    "tokens_of_usage",
]

IMAGE_SIZES: Final = frozenset(
    {"auto", "256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024",
     "1024x1792"}
)  # fmt: skip
"""Sizes counted by name in the images metric; any other is counted as ``other``."""


@dataclass(slots=True)
class TokenUsage:
    tokens_in: int = 0
    tokens_out: int = 0
    cached: int = 0
    """Of `tokens_in`, served from the provider's prompt cache."""
    reasoning: int = 0
    """Of `tokens_out`, spent reasoning."""


def tokens_of_usage(usage: object) -> TokenUsage:
    """A usage object in any of the OpenAI shapes: Responses and images (``input_tokens``,
    ``output_tokens`` and their details) or chat-like (``prompt_tokens``,
    ``completion_tokens`` and theirs)."""
    if not isinstance(usage, dict):
        return TokenUsage()
    if "input_tokens" in usage or "output_tokens" in usage:
        return TokenUsage(
            _int(usage.get("input_tokens")),
            _int(usage.get("output_tokens")),
            _int(_dict(usage.get("input_tokens_details")).get("cached_tokens")),
            _int(_dict(usage.get("output_tokens_details")).get("reasoning_tokens")),
        )
    return TokenUsage(
        _int(usage.get("prompt_tokens")),
        _int(usage.get("completion_tokens")),
        _int(_dict(usage.get("prompt_tokens_details")).get("cached_tokens")),
        _int(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens")),
    )


def record_tokens(
    request: web.Request, target: Target, upstream_s: float, usage: TokenUsage
) -> None:
    """The tokens on the usage record and in the metrics, details included."""
    record_usage(request, target, upstream_s, usage.tokens_in, usage.tokens_out)
    record = request[usage_key]
    record.tokens_cached += usage.cached
    record.tokens_reasoning += usage.reasoning
    details = request.app[metrics_key].token_details
    key_id = request[principal_key].key_id
    if usage.cached:
        details.labels(key_id, target.name, "cached").inc(usage.cached)
    if usage.reasoning:
        details.labels(key_id, target.name, "reasoning").inc(usage.reasoning)


def audio_seconds_of(answer: Any) -> float:
    """The audio's length as the provider reported it: ``usage.seconds`` (a duration
    usage), else ``duration`` (``verbose_json``); 0 when it said nothing."""
    if not isinstance(answer, dict):
        return 0.0
    usage = answer.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration":
        return _number(usage.get("seconds"))
    return _number(answer.get("duration"))


def record_audio(
    request: web.Request, target: Target, *, seconds: float, bytes_in: int, bytes_out: int
) -> None:
    """Audio seconds when the provider reported them, else the bytes uploaded; the bytes
    of speech sent back either way."""
    record = request[usage_key]
    metrics = request.app[metrics_key]
    if seconds > 0:
        record.audio_seconds += seconds
        metrics.audio_seconds.labels(target.name).inc(seconds)
    elif bytes_in:
        record.audio_bytes += bytes_in
        metrics.audio_bytes.labels(target.name, "in").inc(bytes_in)
    if bytes_out:
        record.audio_bytes += bytes_out
        metrics.audio_bytes.labels(target.name, "out").inc(bytes_out)


def record_images(request: web.Request, target: Target, count: int, size: str | None) -> None:
    record = request[usage_key]
    record.images += count
    record.image_size = size
    label = size if size in IMAGE_SIZES else "other"
    if count:
        request.app[metrics_key].images.labels(target.name, label).inc(count)


def last_object(data: bytes, key: bytes) -> dict[str, Any] | None:
    """The JSON object that is the value of the last `key` in `data` (a JSON answer's
    last bytes, where usage figures sit), or None."""
    at = data.rfind(b'"' + key + b'"')
    start = data.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return None
    depth = 0
    for index in range(start, len(data)):
        byte = data[index]
        if byte == 0x7B:  # {
            depth += 1
        elif byte == 0x7D:  # }
            depth -= 1
            if depth == 0:
                try:
                    found = orjson.loads(data[start : index + 1])
                except orjson.JSONDecodeError:
                    return None
                return found if isinstance(found, dict) else None
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if value > 0 else 0.0
