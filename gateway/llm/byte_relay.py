"""Answers passed on as the upstream sends them: a JSON answer whole, or a body relayed
chunk by chunk (speech audio, multi-megabyte images, transcripts) with the upstream's
own content type.

A relayed body has no in-band error: when the upstream fails (or the server shuts down)
after the first byte, the connection is aborted, so the client sees a broken answer,
never a short one that looks whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from backends.base import JSONResponse, StreamHead
from gateway.errors import BackendError, BackendUnavailable
from gateway.llm.model_router import Target
from gateway.ops.request_usage import usage_key
from gateway.ops.streams import open_streams_key

__all__ = ["Relayed", "json_answer", "relay_bytes", "served_by"]

_log = logging.getLogger("tollway.llm")


def served_by(target: Target) -> dict[str, str]:
    return {"X-Tollway-Model": target.name, "X-Tollway-Backend": target.guard.name}


def json_answer(answer: JSONResponse, target: Target) -> web.Response:
    return web.Response(
        status=answer.status,
        body=answer.body,
        content_type="application/json",
        headers={**answer.headers, **served_by(target)},
    )


@dataclass(slots=True)
class Relayed:
    response: web.StreamResponse
    sent: int = 0
    """Body bytes sent to the client."""
    head: bytes = b""
    """The body's first bytes, as many as asked for."""
    tail: bytes = b""
    """The body's last bytes, as many as asked for (where usage figures sit)."""
    complete: bool = False


async def relay_bytes(
    request: web.Request,
    items: AsyncIterator[StreamHead | bytes],
    head: StreamHead | bytes,
    target: Target,
    *,
    keep_head: int = 0,
    keep_tail: int = 0,
) -> Relayed:
    """Send the upstream's answer as it arrives, and note how it ended on the usage
    record. The caller closes `items`."""
    if not isinstance(head, StreamHead):
        raise BackendUnavailable(f"backend {target.guard.name!r} sent a body before its head")
    response = web.StreamResponse(status=head.status, headers={**head.headers, **served_by(target)})
    response.content_type = head.content_type.split(";")[0].strip() or "application/octet-stream"
    if "charset=" in head.content_type:
        response.charset = head.content_type.split("charset=", 1)[1].split(";")[0].strip()
    if head.content_length is not None:
        response.content_length = head.content_length
    await response.prepare(request)
    relayed = Relayed(response)
    usage = request[usage_key]
    with request.app[open_streams_key].track():
        try:
            async for chunk in items:
                if not isinstance(chunk, bytes):
                    continue
                await response.write(chunk)
                relayed.sent += len(chunk)
                if len(relayed.head) < keep_head:
                    relayed.head += chunk[: keep_head - len(relayed.head)]
                if keep_tail:
                    relayed.tail = (relayed.tail + chunk)[-keep_tail:]
            if head.content_length is not None and relayed.sent != head.content_length:
                raise BackendUnavailable("the upstream ended the answer before its length")
            await response.write_eof()
            relayed.complete = True
            usage.outcome, usage.status = "completed", head.status
        except ConnectionResetError:
            usage.outcome, usage.status = "client_gone", 499
        except BackendError as error:
            _log.warning("relay failed", extra={"backend": target.guard.name, "error": error.code})
            usage.outcome, usage.status = "upstream_failed", 502
            _abort(request)
        except asyncio.CancelledError as exc:
            if not request.app[open_streams_key].is_shutdown(exc):
                raise
            usage.outcome, usage.status = "shutdown", 503
            _abort(request)
    return relayed


def _abort(request: web.Request) -> None:
    """End the connection without the body's proper end: the client sees the failure."""
    if request.transport is not None:
        request.transport.abort()
