"""Run the app on a socket until SIGTERM or SIGINT, then drain.

Draining: readiness turns 503, the listening socket closes, idle keep-alive connections
close, in-flight requests and streams get up to `server.shutdown_timeout_s` to finish,
then the cleanup contexts close pools and flush buffers.
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
from gateway.edge.header_deadline import HeaderDeadlineSite
from gateway.ops.lifecycle import state_key

__all__ = ["serve", "run"]

_log = logging.getLogger("tollway.serve")


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
        shutdown_timeout=server.shutdown_timeout_s,
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
            reuse_port=server.workers > 1,
            backlog=1024,
        )
        await site.start()
        addresses = runner.addresses
        _log.info("listening", extra={"addresses": [f"{a[0]}:{a[1]}" for a in addresses]})
        if on_ready is not None:
            on_ready(addresses)
        await stop.wait()
        _log.info("draining", extra={"timeout_s": server.shutdown_timeout_s})
        app[state_key].draining = True
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
