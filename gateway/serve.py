"""Run the app on a socket until SIGTERM or SIGINT, then drain.

Draining (`gateway.edge.drain`): readiness turns 503, the listening socket closes,
requests on open connections are still answered (with ``Connection: close``), idle
connections close once quiet, streams are ended honestly at their share of
`server.shutdown_timeout_s`, and the rest get the whole timeout. aiohttp's own shutdown
then closes what is left within `_FINAL_GRACE_S`, and the cleanup contexts flush usage and
close pools, so the process exits within the timeout plus about two seconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.edge.drain import drain
from gateway.edge.header_deadline import HeaderDeadlineSite
from gateway.edge.refusals import ParserRefusals
from gateway.ops.metrics import metrics_key

__all__ = ["serve", "run"]

_log = logging.getLogger("tollway.serve")

_FINAL_GRACE_S = 0.5
"""After the drain: how long aiohttp waits for a handler still running before it cancels
it (and again for the cancellation to finish)."""


async def serve(
    config: Config,
    *,
    on_ready: Callable[[list[object]], None] | None = None,
    app_factory: Callable[[Config], web.Application] = create_app,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain. `on_ready` gets the bound addresses."""
    app = app_factory(config)
    server = config.server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=_FINAL_GRACE_S,
        keepalive_timeout=server.keepalive_timeout_s,
        access_log=None,
        # A client that hangs up cancels its handler, so an upstream call or stream made
        # on its behalf stops at once instead of burning the provider's tokens.
        handler_cancellation=True,
        max_line_size=server.max_url_bytes,
        max_field_size=server.max_header_bytes,
        max_headers=server.max_headers,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = HeaderDeadlineSite(
            runner,
            server.host,
            server.port,
            header_timeout_s=server.header_timeout_s,
            refusals=ParserRefusals(
                app[metrics_key].http_refusals, log_per_minute=server.refusal_logs_per_minute
            ),
            reuse_port=server.workers > 1,
            backlog=1024,
        )
        await site.start()
        addresses = runner.addresses
        _log.info("listening", extra={"addresses": [f"{a[0]}:{a[1]}" for a in addresses]})
        if on_ready is not None:
            on_ready(addresses)
        await stop.wait()
        await drain(
            app,
            runner.sites,
            site.connections,
            timeout_s=server.shutdown_timeout_s,
            stream_share=server.stream_drain_share,
            idle_s=server.drain_idle_s,
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        _log.info("stopped")


def run(config: Config, *, on_ready: Callable[[list[object]], None] | None = None) -> None:
    """Serve on uvloop (when installed) until a stop signal."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(serve(config, on_ready=on_ready))
        return
    if sys.version_info >= (3, 12):
        asyncio.run(serve(config, on_ready=on_ready), loop_factory=uvloop.new_event_loop)
    else:
        uvloop.run(serve(config, on_ready=on_ready))
