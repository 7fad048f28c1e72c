"""Things that live as long as the app: background tasks, the loop-lag probe, readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.ops.metrics import metrics_key
from gateway.ops.tasks import tasks_key

__all__ = ["AppState", "background_tasks", "loop_lag_probe", "mark_started", "state_key"]

LAG_PROBE_INTERVAL_S = 0.5


@dataclass(slots=True)
class AppState:
    """Lifecycle flags the health probes report."""

    started_at: float
    started: bool = False
    draining: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


state_key = web.AppKey("state", AppState)


async def background_tasks(app: web.Application) -> AsyncIterator[None]:
    """Own the app's tasks; cancel whatever is still running when the app closes."""
    yield
    await app[tasks_key].cancel_all()


async def _measure_lag(app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    gauge = app[metrics_key].loop_lag
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_PROBE_INTERVAL_S)
        gauge.set(max(0.0, loop.time() - before - LAG_PROBE_INTERVAL_S))


async def loop_lag_probe(app: web.Application) -> AsyncIterator[None]:
    app[tasks_key].start(_measure_lag(app), name="loop-lag-probe")
    yield


async def mark_started(app: web.Application) -> AsyncIterator[None]:
    """Last of the startup steps: from here /health/startup and /health/ready say yes."""
    state = app[state_key]
    state.started = True
    yield
    state.draining = True
