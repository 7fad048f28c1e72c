"""What an LLM call used: the tokens the provider reported, recorded on the request's
usage record and counted in the tokens metric."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.edge.principal import principal_key
from gateway.llm.model_router import Target
from gateway.ops.metrics import metrics_key
from gateway.ops.request_usage import usage_key

__all__ = ["record_usage", "token_children_key", "tokens_of"]

_TokenChildren = dict[tuple[str, str], tuple[Any, Any]]
token_children_key = web.AppKey("llm_token_children", _TokenChildren)
"""The tokens counter's (in, out) children by (key id, model): `labels()` takes a lock and
builds its key on every call, which showed in profiles of the hot path."""


def record_usage(
    request: web.Request, target: Target, upstream_s: float, tokens_in: int, tokens_out: int
) -> None:
    usage = request[usage_key]
    usage.upstream_s += upstream_s
    usage.backend = target.guard.name
    usage.model = target.name
    usage.tokens_in += tokens_in
    usage.tokens_out += tokens_out
    if tokens_in or tokens_out:
        key = (request[principal_key].key_id, target.name)
        children = request.app[token_children_key]
        pair = children.get(key)
        if pair is None:
            counter = request.app[metrics_key].tokens
            pair = children[key] = (counter.labels(*key, "in"), counter.labels(*key, "out"))
        pair[0].inc(tokens_in)
        pair[1].inc(tokens_out)


def tokens_of(body: bytes) -> tuple[int, int]:
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return 0, 0
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if completion is None and isinstance(usage.get("total_tokens"), int):
        completion = usage["total_tokens"] - (prompt if isinstance(prompt, int) else 0)
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )
