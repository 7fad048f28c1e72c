"""The circuit breakers of one backend: one for the backend as a whole and, for an LLM
backend, one per model, kept apart so that one overloaded model never routes another
around its primary.

A call made without a model counts wholly on the backend's breaker. A call made for a
model counts what the model did (5xx, timeouts, resets, broken streams) on the model's
breaker, and what the connection did (refused, DNS, TLS, connect timeout) on the
backend's; any answer from the upstream, even an error status, shows the connection
works. Models named in the config get their breakers (and metric labels) at start;
others get one on first use, at most `MAX_UNLISTED_MODELS`, reported under the metric
label ``other``, so labels stay bounded by the configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final

from gateway.config import BreakerConfig
from gateway.errors import BackendError, BackendUnreachable, UpstreamHTTPError
from gateway.ops.metrics import Metrics
from gateway.resilience.breaker import BreakerState, CircuitBreaker

__all__ = ["MAX_UNLISTED_MODELS", "OTHER_MODELS", "Breakers"]

_log = logging.getLogger("tollway.resilience")

MAX_UNLISTED_MODELS: Final = 64
OTHER_MODELS: Final = "other"


class Breakers:
    def __init__(
        self,
        backend: str,
        settings: BreakerConfig,
        metrics: Metrics,
        *,
        models: Iterable[str],
        clock: Callable[[], float],
        rand: Callable[[], float],
    ) -> None:
        self.backend = backend
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rand = rand
        self.whole = self._new("")
        self._listed = frozenset(models)
        self.models = {model: self._new(model) for model in sorted(self._listed)}
        """Every model's breaker, by upstream model name: read it first, it is the hot path."""
        self._overflow: CircuitBreaker | None = None
        for breaker in (self.whole, *self.models.values()):
            metrics.breaker_state.labels(backend, breaker.model).set(0)

    def for_model(self, model: str) -> CircuitBreaker:
        """The breaker of `model` on this backend, made on first use if unlisted."""
        breaker = self.models.get(model)
        if breaker is not None:
            return breaker
        if len(self.models) - len(self._listed) >= MAX_UNLISTED_MODELS:
            idle = next(
                (n for n, b in self.models.items() if n not in self._listed and b.closed), None
            )
            if idle is None:  # every slot holds a failing model: the rest share one more
                if self._overflow is None:
                    self._overflow = self._new(OTHER_MODELS)
                return self._overflow
            del self.models[idle]
        breaker = self.models[model] = self._new(model)
        return breaker

    def record_error(
        self, error: BackendError, probe: bool, own: CircuitBreaker | None, own_probe: bool
    ) -> None:
        """Count a failed call on the breaker(s) it says something about."""
        whole = self.whole
        reason = f"{error.http_status} {error.code}"
        if own is None:
            if error.breaker_failure:
                whole.record_failure(probe, reason)
            else:
                whole.release(probe)
            return
        if isinstance(error, BackendUnreachable):
            whole.record_failure(probe, reason)
            own.release(own_probe)
            return
        if isinstance(error, UpstreamHTTPError):
            whole.record_success(probe)
        else:
            whole.release(probe)
        if error.breaker_failure:
            own.record_failure(own_probe, reason)
        else:
            own.release(own_probe)

    def describe_models(self) -> dict[str, object]:
        return {name: breaker.describe() for name, breaker in self.models.items()}

    def _last_failure(self, model: str) -> str | None:
        breaker = self.models.get(model) if model else self.whole
        return breaker.last_failure if breaker is not None else None

    def _new(self, model: str) -> CircuitBreaker:
        return CircuitBreaker(
            self.backend,
            model=model,
            failures=self._settings.failures,
            reset_s=self._settings.reset_s,
            max_reset_s=self._settings.max_reset_s,
            clock=self._clock,
            rand=self._rand,
            on_change=partial(self._changed, model),
        )

    def _changed(self, model: str, backend: str, state: BreakerState) -> None:
        listed = not model or model in self._listed
        label = model if listed else OTHER_MODELS
        if listed:
            self._metrics.breaker_state.labels(self.backend, label).set(int(state))
        self._metrics.breaker_transitions.labels(self.backend, label, state.name.lower()).inc()
        _log.warning(
            "breaker %s",
            state.name.lower(),
            extra={
                "backend": self.backend,
                "model": model or None,
                "breaker": state.name.lower(),
                "error": self._last_failure(model),
            },
        )
