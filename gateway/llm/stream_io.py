"""Writing a relayed answer to its client, and letting go of its upstream: what every
stream relay (chat, Responses, completions) does the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from gateway.errors import BackendError

__all__ = ["DRAIN_S", "drain", "end", "write"]

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
