"""What the readiness and detailed health probes ask of each component."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from backends.base import Health

__all__ = ["HealthSource"]


class HealthSource(Protocol):
    """A component that can say whether it can serve (a backend, a store, Redis)."""

    name: str
    required: bool
    """Whether /health/ready fails while this source is unhealthy."""

    async def health(self) -> Health: ...

    def describe(self) -> dict[str, Any]:
        """State for /health/detailed (breaker state, last error); no secrets."""


health_sources_key: web.AppKey[list[HealthSource]] = web.AppKey("health_sources")
