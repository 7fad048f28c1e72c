"""Probes: live (the process answers), startup (init done), ready (can serve), detailed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from backends.base import Health
from gateway import __version__
from gateway.config import Config, config_key
from gateway.ops.health import HealthSource, health_sources_key
from gateway.ops.lifecycle import state_key
from gateway.routing import RouteDef, RouteSpec

__all__ = ["routes"]

_PROBE_TIMEOUT_S = 2.0


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


async def live(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


async def startup(request: web.Request) -> web.Response:
    started = request.app[state_key].started
    return _json(200 if started else 503, {"status": "started" if started else "starting"})


async def _check(source: HealthSource) -> Health:
    try:
        return await asyncio.wait_for(source.health(), _PROBE_TIMEOUT_S)
    except TimeoutError:
        return Health(False, "health check timed out")
    except Exception as exc:  # a probe must answer, whatever a component does
        return Health(False, type(exc).__name__)


async def ready(request: web.Request) -> web.Response:
    state = request.app[state_key]
    if state.draining:
        return _json(503, {"status": "draining"})
    if not state.started:
        return _json(503, {"status": "starting"})
    required = [s for s in request.app[health_sources_key] if s.required]
    results = await asyncio.gather(*(_check(s) for s in required))
    failing = {s.name: h.detail for s, h in zip(required, results, strict=True) if not h.ok}
    if failing:
        return _json(503, {"status": "unavailable", "failing": failing})
    return _json(200, {"status": "ready"})


async def detailed(request: web.Request) -> web.Response:
    app = request.app
    state = app[state_key]
    sources = app[health_sources_key]
    results = await asyncio.gather(*(_check(s) for s in sources))
    components = {
        source.name: {
            "ok": health.ok,
            "detail": health.detail,
            "latency_ms": None if health.latency_s is None else round(health.latency_s * 1000, 2),
            "required": source.required,
            **source.describe(),
        }
        for source, health in zip(sources, results, strict=True)
    }
    return _json(
        200,
        {
            "status": "draining" if state.draining else ("ready" if state.started else "starting"),
            "version": __version__,
            "uptime_s": round(time.time() - state.started_at, 1),
            "components": components,
            "config": config_summary(app[config_key]),
        },
    )


def config_summary(config: Config) -> dict[str, Any]:
    """What is configured, without a secret: no DSN, URL credentials, key or hash."""
    return {
        "source": config.source,
        "listen": f"{config.server.host}:{config.server.port}",
        "workers": config.server.workers,
        "state": config.state.split(":", 1)[0],
        "redis": config.redis is not None,
        "cache": {"backend": config.cache.backend, "routes": sorted(config.cache.routes)},
        "limits": {
            "default": [r.text for r in config.limits.default],
            "routes": {k: [r.text for r in v] for k, v in config.limits.routes.items()},
        },
        "backends": {name: b.type for name, b in config.backends.items()},
        "models": sorted(config.models),
        "datasets": sorted(config.datasets),
        "keys": len(config.keys),
    }


def routes() -> list[RouteDef]:
    return [
        RouteDef("GET", "/health/live", live, RouteSpec("health", None, False, "Liveness probe")),
        RouteDef(
            "GET", "/health/startup", startup, RouteSpec("health", None, False, "Startup probe")
        ),
        RouteDef(
            "GET", "/health/ready", ready, RouteSpec("health", None, False, "Readiness probe")
        ),
        RouteDef(
            "GET",
            "/health/detailed",
            detailed,
            RouteSpec("admin", "admin", True, "Version, uptime, components and config summary"),
        ),
    ]
