"""Writing a relayed answer to its client, and letting go of its upstream: what every
stream relay (chat, Responses, completions) does the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from gateway.errors import BackendError, ShuttingDown, TollwayError

__all__ = ["DRAIN_S", "drain", "end", "outcome", "write"]

DRAIN_S: Final = 0.5
"""How long to read on after an answer's last event for the upstream to end it, for a
backend without its own ``done_drain_s``."""


async def write(response: web.StreamResponse, frame: bytes) -> bool:
    """Send `frame`; False when the client has gone."""
    if not frame:
        return True
    try:
        await response.write(frame)
    except ConnectionResetError:
        return False
    return True


async def end(response: web.StreamResponse) -> bool:
    """Finish the answer properly; False when the client has gone."""
    try:
        await response.write_eof()
    except ConnectionResetError:
        return False
    return True


async def drain(events: AsyncIterator[Any], limit_s: float = DRAIN_S) -> None:
    """After the last event the upstream closes at once: read to its end, so its
    connection goes back to the pool and the breaker sees a finished call; give up after
    a moment."""
    try:
        async with asyncio.timeout(limit_s):
            async for _ in events:
                pass
    except (TimeoutError, BackendError):
        pass


def outcome(
    failure: TollwayError | None, *, ended: bool, client_gone: bool, failed: bool = False
) -> tuple[str, int]:
    """How a stream ended for its client, and the status its usage record carries: what
    the client saw, not what the upstream did. `ended`: the answer's own end was sent;
    `failed`: the upstream's own error event was relayed."""
    if isinstance(failure, ShuttingDown):
        return "shutdown", 503
    if failure is not None or failed:
        return "upstream_failed", 502
    if ended and not client_gone:
        return "completed", 200
    return "client_gone", 499
