"""Build the application from a validated config. Wiring only: read it top to bottom to
see the whole request path.

Request path, outermost first:
request id → access log + metrics → compression → errors → body limit → per-IP limit
→ auth → rate limit → budget → route.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp_cors
from aiohttp import web

from gateway import __version__
from gateway.admin import console
from gateway.admin import routes as admin
from gateway.cache.response_cache import ResponseCache, response_cache_key
from gateway.config import Config, config_key
from gateway.data import odata
from gateway.data import routes as data
from gateway.data.datasets import build_datasets
from gateway.edge.access_log import AccessLog
from gateway.edge.auth import Authenticator
from gateway.edge.body_limit import BodyLimits
from gateway.edge.body_schema import BodyChecks, body_checks_key
from gateway.edge.budget import Budgets
from gateway.edge.client_ip import TrustedProxies, trusted_proxies_key
from gateway.edge.compression import Compressor
from gateway.edge.headers import add_common_headers
from gateway.edge.ip_limit import IpLimits
from gateway.edge.key_sync import key_sync_context, unknown_keys_key
from gateway.edge.keytable import KeyTable, key_table_key
from gateway.edge.pipeline import Pipeline, pipeline_key
from gateway.edge.rate_limit import RateLimits
from gateway.edge.request_id import RequestIds
from gateway.llm import audio, passthrough, responses, search
from gateway.llm import routes as llm
from gateway.llm.responses_store import response_owners_context
from gateway.ops import health_routes, metrics_route, openapi
from gateway.ops.error_tracking import ErrorTracker, error_tracker_key
from gateway.ops.health import health_sources_key
from gateway.ops.lifecycle import (
    AppState,
    background_tasks,
    loop_lag_probe,
    mark_started,
    state_key,
)
from gateway.ops.logs import AccessLines
from gateway.ops.metrics import Metrics, metrics_key
from gateway.ops.streams import OpenStreams, open_streams_key
from gateway.ops.tasks import BackgroundTasks, tasks_key
from gateway.resilience.adapters import backends_context, create_backend
from gateway.resilience.limiter import Limiter, LocalLimiter, limiter_key
from gateway.resilience.redis_limiter import RedisLimiter
from gateway.resilience.shared_redis import RedisHealth, SharedRedis, shared_redis_key
from gateway.routing import RouteDef, route_specs_key
from gateway.state.service import state_context, state_service_key

__all__ = ["check_config", "create_app"]

_log = logging.getLogger("tollway.app")


def check_config(config: Config) -> None:
    """What the config alone cannot check, checked by building it (no I/O): each adapter's
    own options and each dataset's SQL. Raises `ConfigError` naming the key at fault."""
    for backend in config.backends.values():
        create_backend(backend)
    build_datasets(config)


def warn_if_replicas_share_nothing(config: Config) -> None:
    """Several replicas with in-process limits each allow the full rate: say so at start."""
    if config.server.replicas <= 1:
        return
    if not config.redis:
        _log.warning(
            "running as one of %d replicas with in-process limits and cache: each replica "
            "allows the full rate; set redis: to share them",
            config.server.replicas,
        )
    if config.state.startswith("sqlite"):
        _log.warning("running as one of %d replicas on a SQLite state file", config.server.replicas)


def create_app(config: Config) -> web.Application:
    check_config(config)
    warn_if_replicas_share_nothing(config)
    server = config.server

    # The parts every request meets.
    metrics = Metrics()
    key_table = KeyTable.from_config(config.keys)
    redis = SharedRedis(config.redis, metrics, prefix=config.redis_prefix) if config.redis else None
    limiter: Limiter = (
        RedisLimiter(redis, metrics, lease_s=config.limits.redis_lease_s)
        if redis
        else LocalLimiter()
    )
    errors = ErrorTracker(server.sentry_dsn, release=__version__)

    # The front door, in the order a request meets it (`gateway.edge.pipeline`).
    pipeline = Pipeline(
        metrics=metrics,
        request_ids=RequestIds(),
        access_log=AccessLog(metrics, slow_request_s=server.slow_request_s),
        compressor=(
            Compressor(server.compression_min_bytes, offload_bytes=server.compression_offload_bytes)
            if server.compression
            else None
        ),
        body_limits=BodyLimits(
            server.max_body_bytes, {"audio": (server.audio_max_bytes, "server.audio_max_bytes")}
        ),
        ip_limits=IpLimits(config.limits, limiter, metrics),
        auth=Authenticator(key_table, config.odata.key_param),
        rate_limits=RateLimits(config.limits, limiter, metrics),
        budgets=Budgets(limiter, metrics),
        errors=errors,
    )
    app = web.Application(middlewares=[pipeline.handle], client_max_size=server.max_body_bytes)
    app[config_key] = config
    app[metrics_key] = metrics
    app[state_key] = AppState(started_at=time.time())
    app[tasks_key] = BackgroundTasks()
    app[open_streams_key] = OpenStreams()
    app[key_table_key] = key_table
    app[health_sources_key] = []
    app[shared_redis_key] = redis
    app[limiter_key] = limiter
    app[response_cache_key] = ResponseCache(config.cache, metrics, redis)
    if redis is not None:
        app[health_sources_key].append(RedisHealth(redis))
        app.on_cleanup.append(_close_redis)
    app[trusted_proxies_key] = TrustedProxies(server.trusted_proxies)
    app[error_tracker_key] = errors
    app[pipeline_key] = pipeline
    app.on_startup.append(_start_front_door)
    app.on_cleanup.append(_flush_access_lines)

    route_defs: list[RouteDef] = [
        *health_routes.routes(),
        *metrics_route.routes(),
        *llm.routes(),
        *responses.routes(),
        *passthrough.routes(),
        *audio.routes(),
        *search.routes(),
        *data.routes(),
        *admin.routes(),
        *odata.routes(),
        *(console.routes() if config.server.console else []),
    ]
    route_defs += openapi.routes(route_defs)
    add_routes(app, route_defs)
    add_cors(app, config.server.cors_origins)
    app.on_response_prepare.append(add_common_headers)

    app.cleanup_ctx.append(background_tasks)
    app.cleanup_ctx.append(loop_lag_probe)
    app.cleanup_ctx.append(backends_context)
    app.cleanup_ctx.append(state_context)
    app.cleanup_ctx.append(response_owners_context)
    app.cleanup_ctx.append(key_sync_context)
    app.cleanup_ctx.append(mark_started)
    app.on_cleanup.append(_close_limiter)
    app.on_cleanup.append(_close_error_tracker)
    llm.setup(app)
    data.setup(app)
    odata.setup(app)
    return app


def add_routes(app: web.Application, route_defs: list[RouteDef]) -> None:
    specs = {}
    checks = app[body_checks_key] = BodyChecks()
    for route in route_defs:
        added = app.router.add_route(route.method, route.path, route.handler)
        specs[added] = route.spec
        checks.for_spec(route.spec)  # each published schema compiled once, at start
    app[route_specs_key] = specs


async def _start_front_door(app: web.Application) -> None:
    """What the front door writes to exists once the app has started: bind it, and plan
    every route (routes added after `create_app`, as tests do, included)."""
    pipeline = app[pipeline_key]
    service = app.get(state_service_key)
    lines = AccessLines(asyncio.get_running_loop())
    pipeline.access_log.start(lines, service.usage if service is not None else None)
    pipeline.auth.start(service, app.get(unknown_keys_key))
    pipeline.plan(app[route_specs_key])


async def _flush_access_lines(app: web.Application) -> None:
    app[pipeline_key].access_log.flush()


def add_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        expose_headers=("X-Request-ID", "RateLimit", "RateLimit-Policy", "Retry-After"),
        allow_headers=("Authorization", "Content-Type", "X-API-Key", "X-Request-ID"),
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)


async def _close_limiter(app: web.Application) -> None:
    await app[limiter_key].close()


async def _close_error_tracker(app: web.Application) -> None:
    app[error_tracker_key].close()


async def _close_redis(app: web.Application) -> None:
    redis = app[shared_redis_key]
    if redis is not None:
        await redis.close()
