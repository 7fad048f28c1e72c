"""Every typed key of the app's state (`web.AppKey`) and a request's state (`web.RequestKey`).

Kept in one small module so middlewares, routes and components share state without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.cache import ResponseCache
from gateway.client_ip import client_ip_key, trusted_proxies_key
from gateway.config import Config
from gateway.error_tracking import ErrorTracker
from gateway.keytable import KeyTable
from gateway.limiter import Decision, Limiter
from gateway.metrics import Metrics
from gateway.principal import Principal
from gateway.redis_state import SharedRedis
from gateway.routing import RouteSpec
from gateway.tasks import BackgroundTasks
from gateway.usage_record import RequestUsage

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import AbstractRoute

    from gateway.health import HealthSource

__all__ = [
    "AppState",
    "client_ip_key",
    "error_tracker_key",
    "response_cache_key",
    "shared_redis_key",
    "started_key",
    "trusted_proxies_key",
    "config_key",
    "health_sources_key",
    "key_table_key",
    "limit_decision_key",
    "limiter_key",
    "metrics_key",
    "principal_key",
    "request_id_key",
    "route_spec_key",
    "route_specs_key",
    "state_key",
    "tasks_key",
    "usage_key",
]


@dataclass(slots=True)
class AppState:
    """Lifecycle flags the health probes report."""

    started_at: float
    started: bool = False
    draining: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


config_key = web.AppKey("config", Config)
metrics_key = web.AppKey("metrics", Metrics)
limiter_key = web.AppKey("limiter", Limiter)
key_table_key = web.AppKey("key_table", KeyTable)
state_key = web.AppKey("state", AppState)
tasks_key = web.AppKey("tasks", BackgroundTasks)
route_specs_key: web.AppKey[dict[AbstractRoute, RouteSpec]] = web.AppKey("route_specs")
health_sources_key: web.AppKey[list[HealthSource]] = web.AppKey("health_sources")
error_tracker_key = web.AppKey("error_tracker", ErrorTracker)
response_cache_key = web.AppKey("response_cache", ResponseCache)
shared_redis_key: web.AppKey[SharedRedis | None] = web.AppKey("shared_redis")

request_id_key = web.RequestKey("request_id", str)
started_key = web.RequestKey("started", float)
"""`time.perf_counter()` when the request reached the first middleware."""
principal_key = web.RequestKey("principal", Principal)
route_spec_key = web.RequestKey("route_spec", RouteSpec)
limit_decision_key = web.RequestKey("limit_decision", Decision)
usage_key = web.RequestKey("usage", RequestUsage)
