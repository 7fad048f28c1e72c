"""Streams in flight, so that a shutdown ends each one honestly instead of cutting it.

A relay runs inside `OpenStreams.track()`. When the drain's share for streams has passed,
`end_all()` cancels every tracked relay with the message `SHUTDOWN`. The relay catches
that cancellation (`is_shutdown()` tells it from a client hanging up, and clears it),
sends its in-band error event and a proper end, and returns: the client sees an
explicit error, never a broken body. Tracking costs a set add and discard per stream,
nothing per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from aiohttp import web

__all__ = ["SHUTDOWN", "OpenStreams", "open_streams_key"]

SHUTDOWN: Final = "tollway: shutting down"


class OpenStreams:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._asked: set[asyncio.Task[object]] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._tasks)

    @contextmanager
    def track(self) -> Iterator[None]:
        """Register the running task as a relay until the block ends."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - relays always run in a task
            yield
            return
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)
            self._asked.discard(task)

    def end_all(self) -> int:
        """Ask every open stream to end now, each once (a stream ending itself must not be
        cancelled again while it writes its last event); the number newly asked."""
        self.closing = True
        fresh = self._tasks - self._asked
        for task in fresh:
            task.cancel(SHUTDOWN)
        self._asked |= fresh
        return len(fresh)

    def is_shutdown(self, exc: asyncio.CancelledError) -> bool:
        """Whether `exc` is `end_all`'s request. If so the cancellation is cleared: the
        relay must end its stream and return normally."""
        if not (self.closing and exc.args and exc.args[0] == SHUTDOWN):
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True


open_streams_key = web.AppKey("open_streams", OpenStreams)
