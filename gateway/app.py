"""Build the application from a validated config. Wiring only: read it top to bottom to
see the whole request path.

Request path, outermost first:
request id → access log + metrics → compression → errors → body limit → per-IP limit
→ auth → rate limit → route.
"""

from __future__ import annotations

import logging
import time

import aiohttp_cors
from aiohttp import web

from gateway import __version__
from gateway.adapters import backends_context
from gateway.appkeys import (
    AppState,
    config_key,
    error_tracker_key,
    health_sources_key,
    key_table_key,
    limiter_key,
    metrics_key,
    response_cache_key,
    route_specs_key,
    shared_redis_key,
    state_key,
    tasks_key,
    trusted_proxies_key,
)
from gateway.cache import ResponseCache
from gateway.client_ip import TrustedProxies
from gateway.config import Config
from gateway.error_tracking import ErrorTracker
from gateway.headers import add_common_headers
from gateway.keytable import KeyTable
from gateway.lifecycle import background_tasks, loop_lag_probe, mark_started
from gateway.limiter import Limiter, LocalLimiter
from gateway.metrics import Metrics
from gateway.middleware.access_log import access_log_middleware
from gateway.middleware.auth import auth_middleware
from gateway.middleware.body_limit import body_limit_middleware
from gateway.middleware.budget import budget_middleware
from gateway.middleware.compression import compression_middleware
from gateway.middleware.errors import errors_middleware
from gateway.middleware.ip_limit import ip_limit_middleware
from gateway.middleware.rate_limit import rate_limit_middleware
from gateway.middleware.request_id import request_id_middleware
from gateway.redis_limiter import RedisLimiter
from gateway.redis_state import RedisHealth, SharedRedis
from gateway.routes import admin, console, data, health, llm, metrics, odata, openapi, search
from gateway.routing import RouteDef
from gateway.state.service import state_context
from gateway.tasks import BackgroundTasks

__all__ = ["create_app"]

_log = logging.getLogger("tollway.app")


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
    warn_if_replicas_share_nothing(config)
    app = web.Application(
        middlewares=[
            request_id_middleware,
            access_log_middleware(config.server.slow_request_s),
            *(
                [
                    compression_middleware(
                        config.server.compression_min_bytes,
                        offload_bytes=config.server.compression_offload_bytes,
                    )
                ]
                if config.server.compression
                else []
            ),
            errors_middleware,
            body_limit_middleware(config.server.max_body_bytes),
            ip_limit_middleware(config.limits),
            auth_middleware,
            rate_limit_middleware(config.limits),
            budget_middleware,
        ],
        client_max_size=config.server.max_body_bytes,
    )
    app[config_key] = config
    app[metrics_key] = Metrics()
    app[state_key] = AppState(started_at=time.time())
    app[tasks_key] = BackgroundTasks()
    app[key_table_key] = KeyTable.from_config(config.keys)
    app[health_sources_key] = []
    redis = (
        SharedRedis(config.redis, app[metrics_key], prefix=config.redis_prefix)
        if config.redis
        else None
    )
    app[shared_redis_key] = redis
    limiter: Limiter = RedisLimiter(redis, app[metrics_key]) if redis else LocalLimiter()
    app[limiter_key] = limiter
    app[response_cache_key] = ResponseCache(config.cache, app[metrics_key], redis)
    if redis is not None:
        app[health_sources_key].append(RedisHealth(redis))
        app.on_cleanup.append(_close_redis)
    app[trusted_proxies_key] = TrustedProxies(config.server.trusted_proxies)
    app[error_tracker_key] = ErrorTracker(config.server.sentry_dsn, release=__version__)

    route_defs: list[RouteDef] = [
        *health.routes(),
        *metrics.routes(),
        *llm.routes(),
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
    app.cleanup_ctx.append(mark_started)
    app.on_cleanup.append(_close_error_tracker)
    llm.setup(app)
    data.setup(app)
    return app


def add_routes(app: web.Application, route_defs: list[RouteDef]) -> None:
    specs = {}
    for route in route_defs:
        added = app.router.add_route(route.method, route.path, route.handler)
        specs[added] = route.spec
    app[route_specs_key] = specs


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


async def _close_error_tracker(app: web.Application) -> None:
    app[error_tracker_key].close()


async def _close_redis(app: web.Application) -> None:
    redis = app[shared_redis_key]
    if redis is not None:
        await redis.close()
