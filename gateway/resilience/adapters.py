"""From a backend's config to its adapter, wrapped in its guard, started and closed
with the app."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from aiohttp import web

from backends.base import WORKER_EVENTS, Backend, OptionError, RunsWorkers
from gateway.config import BackendConfig, config_key
from gateway.config.reader import ConfigError
from gateway.ops.health import health_sources_key
from gateway.ops.metrics import Metrics, metrics_key
from gateway.resilience.guard import Guard
from gateway.resilience.limiter import limiter_key
from gateway.resilience.redis_limiter import RedisLimiter, SharedOutboundLimiter
from gateway.resilience.registry import BackendRegistry, backends_key

__all__ = ["backends_context", "create_backend"]

ADAPTERS: Final = {
    "openai": "backends.openai",
    "tavily": "backends.tavily",
    "postgres": "backends.postgres",
    "duckdb": "backends.duckdb",
}


def create_backend(config: BackendConfig) -> Backend:
    """The unstarted adapter for `config`; a wrong option raises `ConfigError` naming it."""
    try:
        module = importlib.import_module(ADAPTERS[config.type])
    except ModuleNotFoundError:
        raise ConfigError(
            f"backends.{config.name}.type", f'the "{config.type}" adapter is not installed'
        ) from None
    try:
        backend: Backend = module.create(
            config.name,
            config.options,
            timeout_s=config.timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            max_response_bytes=config.max_response_bytes,
        )
    except OptionError as exc:
        raise ConfigError(f"backends.{config.name}.{exc.key}", exc.problem) from None
    return backend


def _counted_in(metrics: Metrics, backend: str) -> Callable[[str, str], None]:
    # every event's series exists from the start at 0, so the first loss is an increase
    for event in WORKER_EVENTS:
        metrics.backend_worker_events.labels(backend, event)

    def count(name: str, event: str) -> None:
        metrics.backend_worker_events.labels(name, event).inc()

    return count


async def backends_context(app: web.Application) -> AsyncIterator[None]:
    """Start every configured backend behind its guard; close them all at shutdown."""
    config = app[config_key]
    registry = BackendRegistry()
    app[backends_key] = registry
    started: list[Backend] = []
    try:
        for backend_config in config.backends.values():
            backend = create_backend(backend_config)
            if isinstance(backend, RunsWorkers):
                backend.report_worker_events(_counted_in(app[metrics_key], backend.name))
            await backend.start()
            started.append(backend)
            limiter = app[limiter_key]
            rate = backend_config.outbound_limit
            shared = (
                SharedOutboundLimiter(limiter, backend_config.name, rate)
                if rate is not None and isinstance(limiter, RedisLimiter)
                else None
            )
            guard: Guard[Any] = Guard(
                backend,
                backend_config,
                app[metrics_key],
                outbound=shared,
                required=backend_config.required,
                models=[
                    m.upstream_model
                    for m in config.models.values()
                    if m.backend == backend_config.name
                ],
            )
            registry.add(guard)
            app[health_sources_key].append(guard)
        yield
    finally:
        for backend in reversed(started):
            await backend.close()
