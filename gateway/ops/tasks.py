"""Background tasks that are named, referenced until done, and cancelled at shutdown.

The event loop keeps only weak references to tasks; a task nobody holds can vanish
mid-flight. `TaskGroup`-like ownership without its fail-together semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

__all__ = ["BackgroundTasks", "spawn"]

T = TypeVar("T")


def spawn(
    coro: Coroutine[Any, Any, T], *, name: str, owner: set[asyncio.Task[Any]]
) -> asyncio.Task[T]:
    """Start `coro` as a task named `name`, held in `owner` until it finishes."""
    task = asyncio.create_task(coro, name=name)  # noqa: TID251 - this is the wrapper
    owner.add(task)
    task.add_done_callback(owner.discard)
    return task


class BackgroundTasks:
    """The app's long-lived tasks (loop-lag probe, refreshers, flushers)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        return spawn(coro, name=name, owner=self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


tasks_key = web.AppKey("tasks", BackgroundTasks)
