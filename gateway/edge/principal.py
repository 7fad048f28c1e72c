"""Who is calling: the API key's identity, tenant, scopes and allowances."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.config.rates import Rate

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    """Models this key may name; None means every model."""
    datasets: frozenset[str] | None = None
    """Datasets this key may read; None means every dataset."""
    limits: tuple[Rate, ...] | None = None
    """Per-key request limits; None means the configured default."""
    budget_tokens: tuple[Rate, ...] = ()
    name: str | None = None
    expires_at: float | None = None
    """Unix time after which the key is refused; None never expires."""
    source: str = "config"

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def may_read_dataset(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets


principal_key = web.RequestKey("principal", Principal)
