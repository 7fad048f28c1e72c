"""Every Prometheus metric Tollway exposes, registered in a registry the app owns.

Labels are bounded: routes are templates (``/v1/datasets/{name}/query``), never raw paths;
backends, models and key ids come from configuration or the key store, never from the
request text.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip


class Metrics:
    """The app's metrics. One instance per app; tests get a fresh registry each."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tollway_requests",
            "Requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "tollway_request_duration_seconds",
            "Time from request start to the end of the answer.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "tollway_requests_in_flight",
            "Requests being served now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.limit_rejections = Counter(
            "tollway_limit_rejections",
            "Requests refused by a limit, by limit kind (key, ip, budget, outbound) and route.",
            ["limit", "route"],
            registry=r,
        )
        self.loop_lag = Gauge(
            "tollway_event_loop_lag_seconds",
            "How late the event loop ran a timer that should have fired on time.",
            registry=r,
            multiprocess_mode="max",
        )
        self.upstream_duration = Histogram(
            "tollway_upstream_duration_seconds",
            "Time a backend took to answer (to the end of the body, or of the stream).",
            ["backend", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "tollway_time_to_first_token_seconds",
            "Time from request start to the first streamed chunk sent to the client.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.breaker_state = Gauge(
            "tollway_breaker_state",
            "Circuit breaker state per backend (model empty) and per (backend, model) for"
            " LLM backends: 0 closed, 1 open, 2 half-open.",
            ["backend", "model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.breaker_transitions = Counter(
            "tollway_breaker_transitions",
            "Circuit breaker state changes, by backend, model (empty: the whole backend;"
            " other: a model the config does not name) and new state.",
            ["backend", "model", "state"],
            registry=r,
        )
        self.retries = Counter(
            "tollway_upstream_retries",
            "Retries of a backend call, by reason (connect, reset, 408, 409, 429, 5xx).",
            ["backend", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "tollway_fallbacks",
            "Requests passed to a fallback model, by the model asked for, the one tried next"
            " and why (5xx, 429, timeout, breaker_open, connect, context_length, ...).",
            ["model", "fallback", "reason"],
            registry=r,
        )
        self.stream_continuations = Counter(
            "tollway_stream_continuations",
            "Streams that failed mid-answer, by the model asked for and how they ended:"
            " prefill or regenerate (finished on another call), gave_up (in-band error).",
            ["model", "how"],
            registry=r,
        )
        self.malformed_events = Counter(
            "tollway_stream_malformed_events",
            "Stream events that were not JSON, dropped, by backend.",
            ["backend"],
            registry=r,
        )
        self.outbound_wait = Histogram(
            "tollway_outbound_wait_seconds",
            "Time spent waiting for a provider's outbound quota.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_requests = Counter(
            "tollway_cache_requests",
            "Cache lookups by route class and result (hit, miss, bypass).",
            ["route_class", "result"],
            registry=r,
        )
        self.query_rows = Counter(
            "tollway_query_rows",
            "Rows answered by data queries, by backend.",
            ["backend"],
            registry=r,
        )
        self.query_refusals = Counter(
            "tollway_query_refusals",
            "Queries refused before reaching a backend, by reason.",
            ["reason"],
            registry=r,
        )
        self.redis_fallback = Gauge(
            "tollway_redis_fallback_active",
            "1 while Redis is unavailable and limits and cache run in this process.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.redis_errors = Counter(
            "tollway_redis_errors", "Redis calls that failed or timed out.", registry=r
        )
        self.limiter_decisions = Counter(
            "tollway_limiter_decisions",
            "Limit decisions by where they were made (redis, local).",
            ["backend"],
            registry=r,
        )
        self.cache_hit_seconds = Histogram(
            "tollway_cache_hit_seconds",
            "Time to answer from the cache, by route class.",
            ["route_class"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )
        self.cache_joins = Counter(
            "tollway_cache_singleflight_joins",
            "Requests that waited for an identical request's answer instead of calling.",
            ["route_class"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "tollway_cache_entries",
            "Entries in the in-process cache.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "tollway_cache_bytes",
            "Bytes held by the in-process cache.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.usage_spilled = Counter(
            "tollway_usage_spilled",
            "Usage records written to the local spill file while the state store was away.",
            registry=r,
        )
        self.usage_rejected = Counter(
            "tollway_usage_rejected",
            "Usage records the state store refused for their data, kept in the rejected file.",
            registry=r,
        )
        self.usage_buffered = Gauge(
            "tollway_usage_buffered",
            "Usage records waiting to be written.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.state_store_errors = Counter(
            "tollway_state_store_errors",
            "State store (Postgres) calls that failed or timed out, by operation.",
            ["operation"],
            registry=r,
        )
        self.budget_rejections = Counter(
            "tollway_budget_rejections", "Requests refused for a spent token budget.", registry=r
        )
        self.http_refusals = Counter(
            "tollway_http_refusals",
            "Requests the HTTP parser refused before any route saw them, by error code.",
            ["code"],
            registry=r,
        )
        self.backend_worker_events = Counter(
            "tollway_backend_worker_events",
            "Worker processes of isolated backends, by event: started, out_of_memory (killed "
            "past its memory cap), stuck (killed: an interrupted query would not stop), "
            "crashed (gone on its own).",
            ["backend", "event"],
            registry=r,
        )
        self.key_lookups = Counter(
            "tollway_key_lookups",
            "Keys unknown to this replica looked up in the state store, by result "
            "(found, unknown, cached, limited, failed).",
            ["result"],
            registry=r,
        )
        self.tokens = Counter(
            "tollway_tokens",
            "LLM tokens by key id, model and direction (in, out).",
            ["key_id", "model", "direction"],
            registry=r,
        )
        self.token_details = Counter(
            "tollway_token_details",
            "Of the LLM tokens, those served from the provider's prompt cache (kind=cached, "
            "of the input) and those spent reasoning (kind=reasoning, of the output).",
            ["key_id", "model", "kind"],
            registry=r,
        )
        self.audio_seconds = Counter(
            "tollway_audio_seconds",
            "Audio transcribed or translated, in seconds, as the provider reported them.",
            ["model"],
            registry=r,
        )
        self.audio_bytes = Counter(
            "tollway_audio_bytes",
            "Audio bytes uploaded to be transcribed (direction=in) or spoken back (out).",
            ["model", "direction"],
            registry=r,
        )
        self.images = Counter(
            "tollway_images",
            "Images generated, by model and size.",
            ["model", "size"],
            registry=r,
        )
        self.response_id_refusals = Counter(
            "tollway_response_id_refusals",
            "Stored response ids refused (404) because another tenant created them "
            "(other_tenant) or Tollway never relayed them (unknown).",
            ["reason"],
            registry=r,
        )


metrics_key = web.AppKey("metrics", Metrics)
