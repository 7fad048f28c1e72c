"""From the model a client names to the backends that may serve it, in order.

A name is either a row of the config's `models` table (its backend, the upstream's name
for it, and its ordered fallbacks) or ``backend/model`` for any model of a configured
LLM backend. The client never chooses a URL or host: only configured backends are
reachable, so there is no path from a request body to an arbitrary upstream.

Asked for one API (chat, responses, audio, …), the router keeps only the targets whose
model and backend serve it (`apis` in the config): a model that does not is a clear 400,
never an upstream 404, and a fallback that does not is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config
from gateway.edge.principal import Principal
from gateway.errors import BadRequest, Forbidden, NotConfigured, NotFound
from gateway.resilience.guard import Guard
from gateway.resilience.registry import BackendRegistry

__all__ = ["ModelRouter", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    """The model's name as Tollway knows it (a `models` entry or ``backend/model``)."""
    upstream_model: str
    guard: Guard[Any]
    prefill: bool = False
    """Whether the model continues a trailing assistant message (`models.<m>.prefill`)."""
    prefill_body: Mapping[str, Any] = field(default_factory=dict)
    """Extra fields for a continuation request (`models.<m>.prefill_body`)."""


class ModelRouter:
    def __init__(self, config: Config, registry: BackendRegistry, *, kind: str = "llm") -> None:
        self._config = config
        self._registry = registry
        self._kind = kind

    def targets(self, principal: Principal, model: object, api: str | None = None) -> list[Target]:
        """The primary target for `model` and its fallbacks; 404 for an unknown model,
        403 for a model the key may not use. With `api`, only targets serving it: 503 when
        no backend here serves it, 400 when the model does not."""
        if api is not None:
            self.require_served(api)
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' must be a non-empty string", param="model")
        primary = self._target(model)
        if not principal.may_use_model(model) and not self._wildcard_allows(principal, model):
            raise Forbidden(
                f"this key may not use the model {model!r}",
                code="model_not_allowed",
                param="model",
                should_retry=False,
            )
        if api is not None and api not in self.apis_of(primary):
            raise BadRequest(
                f"the model {model!r} does not serve the {api} API here",
                code="unsupported_api",
                param="model",
            )
        found = [primary]
        entry = self._config.models.get(model)
        for fallback in entry.fallbacks if entry else ():
            target = self._target(fallback)
            if api is not None and api not in self.apis_of(target):
                continue
            if all(t.name != target.name for t in found):
                found.append(target)
        return found

    def apis_of(self, target: Target) -> frozenset[str]:
        """The APIs `target` serves: its model's `apis`, else its backend's."""
        entry = self._config.models.get(target.name)
        if entry is not None and entry.apis is not None:
            return entry.apis
        apis: frozenset[str] = target.guard.config.apis
        return apis

    def require_served(self, api: str) -> None:
        """`NotConfigured` (naming what to set) when no configured backend serves `api`."""
        if any(api in b.apis for b in self._config.backends.values() if self._is_kind(b.name)):
            return
        hint = self._config.unconfigured.get(api)
        raise NotConfigured(
            f"no LLM provider here serves the {api} API: {hint}"
            if hint
            else f"no backend in Tollway's config serves the {api} API (see a backend's apis)"
        )

    def first_serving(self, principal: Principal, api: str) -> str | None:
        """The first `models` entry serving `api` that this key may use (for requests
        where the model is optional, such as moderations)."""
        for name in self.listed(principal):
            entry = self._config.models[name]
            if api in (entry.apis if entry.apis is not None else self._backend_apis(entry.backend)):
                return name
        return None

    def _backend_apis(self, backend: str) -> frozenset[str]:
        return self._config.backends[backend].apis

    def listed(self, principal: Principal) -> list[str]:
        """The `models` entries this key may use, for ``GET /v1/models``."""
        return [
            name
            for name, entry in self._config.models.items()
            if self._is_kind(entry.backend)
            and (principal.may_use_model(name) or self._wildcard_allows(principal, name))
        ]

    def _target(self, model: str) -> Target:
        entry = self._config.models.get(model)
        if entry is not None and self._is_kind(entry.backend):
            return Target(
                model,
                entry.upstream_model,
                self._registry.get(entry.backend),
                entry.prefill,
                entry.prefill_body,
            )
        backend, sep, upstream = model.partition("/")
        if sep and upstream and backend in self._config.backends and self._is_kind(backend):
            return Target(model, upstream, self._registry.get(backend))
        raise NotFound(
            f"the model {model!r} does not exist or is not served here",
            code="model_not_found",
            param="model",
            should_retry=False,
        )

    def _is_kind(self, backend: str) -> bool:
        config = self._config.backends.get(backend)
        return config is not None and _KIND_OF_TYPE.get(config.type) == self._kind

    @staticmethod
    def _wildcard_allows(principal: Principal, model: str) -> bool:
        """A key's ``models`` may hold ``backend/*``: every model of that backend."""
        if principal.models is None:
            return True
        backend, sep, _ = model.partition("/")
        return bool(sep) and f"{backend}/*" in principal.models


_KIND_OF_TYPE = {"openai": "llm", "tavily": "search", "postgres": "sql", "duckdb": "sql"}
