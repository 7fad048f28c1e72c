"""The drain after SIGTERM: nothing in flight is cut silently, no connection is reset.

`drain` runs between the stop signal and aiohttp's own shutdown:

1. Readiness turns 503 and every answer from now on carries ``Connection: close``
   (`gateway.edge.headers`), so a client or load balancer never reuses a connection
   that answered after the signal.
2. The listening socket closes: new connections are refused, which a load balancer
   retries on another replica (a refused connect never reached anyone).
3. Connections already open keep being served: a request that arrives on a kept-alive
   connection after the signal is answered, with ``Connection: close``. A connection
   is closed as idle only once it has been quiet (no request on it, no byte from it)
   for ``server.drain_idle_s`` since the signal or its last activity, with a FIN.
   Closing every idle connection at the signal, as aiohttp does, races a proxy that
   picked one of them for its next request: that request meets a reset. A proxy whose
   upstream keep-alive timeout is shorter than ``drain_idle_s`` (nginx's
   ``keepalive_timeout`` in the ``upstream`` block: 4 s shipped, 5 s here) has closed
   such a connection itself before Tollway would, so the race cannot happen at all.
4. Streams get ``server.stream_drain_share`` of ``server.shutdown_timeout_s``; then
   each open stream is ended honestly (`gateway.ops.streams`): an in-band
   ``server_shutting_down`` event, a proper end, its usage recorded as cut by shutdown.
5. It returns when no connection is left, or at the timeout; aiohttp's shutdown then
   closes what remains, and the cleanup contexts flush usage and close pools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from aiohttp import web

from gateway.edge.header_deadline import Connection
from gateway.ops.lifecycle import state_key
from gateway.ops.streams import open_streams_key

__all__ = ["drain"]

_log = logging.getLogger("tollway.serve")

_TICK_S = 0.05


async def drain(
    app: web.Application,
    sites: Collection[web.BaseSite],
    connections: Collection[Connection],
    *,
    timeout_s: float,
    stream_share: float,
    idle_s: float,
) -> None:
    """Serve what is in flight until it is done or `timeout_s` has passed (see above)."""
    started = time.monotonic()
    app[state_key].draining = True
    for site in sites:
        await site.stop()
    streams = app[open_streams_key]
    streams_end_at = started + timeout_s * stream_share
    ends_at = started + timeout_s
    _log.info(
        "draining",
        extra={"timeout_s": timeout_s, "connections": len(connections), "streams": len(streams)},
    )
    while True:
        now = time.monotonic()
        if now >= streams_end_at:
            ended = streams.end_all()
            if ended:
                _log.info("streams ended for shutdown", extra={"streams": ended})
        for connection in list(connections):
            if connection.busy:  # quiet is counted from the end of its last answer
                connection.last_seen = now
            elif now - max(connection.last_seen, started) >= idle_s:
                connection.close_if_idle()
        if not any(not c.closed for c in connections) or now >= ends_at:
            break
        await asyncio.sleep(min(_TICK_S, max(0.0, ends_at - now)))
    left = sum(1 for c in connections if not c.closed)
    _log.info(
        "drained",
        extra={"seconds": round(time.monotonic() - started, 3), "connections_left": left},
    )
