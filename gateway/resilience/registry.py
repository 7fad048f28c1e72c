"""The started backends, by name, each behind its guard."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import NotFound
from gateway.resilience.guard import Guard

__all__ = ["BackendRegistry", "backends_key"]


class BackendRegistry:
    def __init__(self) -> None:
        self._guards: dict[str, Guard[Any]] = {}

    def add(self, guard: Guard[Any]) -> None:
        self._guards[guard.name] = guard

    def get(self, name: str) -> Guard[Any]:
        """The guarded backend `name`; `NotFound` when no such backend is configured."""
        guard = self._guards.get(name)
        if guard is None:
            raise NotFound(f"no backend named {name!r}", code="backend_not_found")
        return guard

    def of_kind(self, kind: str) -> list[Guard[Any]]:
        return [g for g in self._guards.values() if getattr(g.backend, "kind", None) == kind]

    def __iter__(self) -> Any:
        return iter(self._guards.values())

    def __len__(self) -> int:
        return len(self._guards)


backends_key = web.AppKey("backends", BackendRegistry)
