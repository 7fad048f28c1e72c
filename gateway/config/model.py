"""The configuration's typed, frozen objects: what every other part of Tollway reads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.config.rates import Rate

__all__ = [
    "APIS",
    "BACKEND_TYPES",
    "ROUTE_CLASSES",
    "SCOPES",
    "BackendConfig",
    "BreakerConfig",
    "CacheConfig",
    "Config",
    "DatasetConfig",
    "KeyConfig",
    "LimitsConfig",
    "ModelConfig",
    "ODataConfig",
    "ServerConfig",
]

SCOPES: Final = ("llm", "search", "query", "odata", "admin")
BACKEND_TYPES: Final = ("openai", "tavily", "postgres", "duckdb")
ROUTE_CLASSES: Final = (
    "chat", "embeddings", "models", "search", "query", "datasets", "odata", "admin",
    "responses", "completions", "moderations", "images", "audio",
)  # fmt: skip
APIS: Final = ("chat", "embeddings", "responses", "completions", "moderations", "audio", "images")
"""The OpenAI APIs an LLM backend (or one of its models) may serve: a backend's ``apis``."""
DEFAULT_STATE: Final = "sqlite:///./tollway-state.db"
DEFAULT_LIMITS: Final = ("60/minute", "1000/hour")
DEFAULT_PER_IP: Final = ("60/minute", "1000/hour")
DEFAULT_PER_IP_AUTHENTICATED: Final = ("6000/minute", "100000/hour")
DEFAULT_KEY_LOOKUPS_PER_IP: Final = ("30/minute",)
KEY_HASH: Final = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024
    shutdown_timeout_s: float = 30.0
    stream_drain_share: float = 0.9
    """The share of `shutdown_timeout_s` open streams may run on after SIGTERM before each
    is ended with an in-band ``server_shutting_down`` event (the rest writes that event and
    flushes usage)."""
    drain_idle_s: float = 5.0
    """After SIGTERM, a kept-alive connection is closed once it has been idle this long
    (requests arriving on it meanwhile are answered, with ``Connection: close``). Longer
    than the proxy's upstream keep-alive timeout, so the proxy closes idle ones first."""
    keepalive_timeout_s: float = 75.0
    """Longer than the proxy's upstream keep-alive (nginx ``keepalive_timeout``), so the
    proxy, not Tollway, closes idle connections in normal operation."""
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    console: bool = False
    log_level: str = "info"
    workers: int = 1
    replicas: int = 1
    """How many Tollway processes share this config (set by the deployment); >1 wants Redis."""
    compression: bool = True
    compression_min_bytes: int = 1024
    compression_offload_bytes: int = 256 * 1024
    slow_request_s: float = 1.0
    sentry_dsn: str | None = None
    max_url_bytes: int = 8190
    max_header_bytes: int = 8190
    max_headers: int = 100
    header_timeout_s: float = 15.0
    audio_max_bytes: int = 25 * 1024 * 1024
    """Audio uploads (transcriptions, translations) answer to this limit, counted while the
    upload streams, instead of `max_body_bytes`."""
    responses_ttl_s: float = 30 * 86400.0
    """How long a stored response id stays bound to the tenant that created it."""
    unknown_key_cache_s: float = 2.0
    """A key the state store did not know is refused from memory this long, unasked."""
    key_lookup_timeout_s: float = 0.5
    """The longest a request waits for the store to say whether it knows a key."""
    refusal_logs_per_minute: int = 10
    """Requests the HTTP parser refuses: at most this many WARNING lines a minute per client
    address (every refusal is still counted in ``tollway_http_refusals_total``)."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    default: tuple[Rate, ...]
    routes: Mapping[str, tuple[Rate, ...]] = field(default_factory=dict)
    per_ip: tuple[Rate, ...] = ()
    """Per client IP, before auth: unauthenticated and failed-auth requests."""
    per_ip_authenticated: tuple[Rate, ...] = ()
    redis_lease_s: float = 1.0
    """With Redis: how long a lease of a very high rate may be spent locally (0: never
    leased, every request decided by Redis)."""
    """Per client IP for authenticated traffic: higher, so many users behind one NAT fit."""
    key_lookups_per_ip: tuple[Rate, ...] = ()
    """Per client IP: how often a key this replica does not know is looked up in the store."""


@dataclass(frozen=True, slots=True)
class CacheConfig:
    backend: str = "memory"
    ttl_s: float = 60.0
    max_rows: int = 10_000
    max_entry_bytes: int = 1024 * 1024
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    routes: frozenset[str] = frozenset({"embeddings", "search", "query", "datasets", "odata"})


@dataclass(frozen=True, slots=True)
class ODataConfig:
    page_size: int = 5000
    max_page_size: int = 20_000
    key_param: str | None = None
    skiptoken_secrets: tuple[str, ...] = ()
    """HMAC secrets for ``$skiptoken`` (the first signs, all verify); empty: per process."""
    max_filter_depth: int = 50
    """How deeply a ``$filter`` may nest (parentheses, not, minus, function arguments)."""
    page_limits: tuple[Rate, ...] = ()
    """Per key: next-link pages of reads already admitted (their own ceiling, apart from
    the per-minute limits that admitted the read's first page)."""


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5
    reset_s: float = 10.0
    """Open time after `failures` consecutive failures, before the first probe."""
    max_reset_s: float = 20.0
    """Cap on the open time as failed probes lengthen it: bounds how long a recovered
    provider waits for its traffic."""


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What every backend has; `options` holds the keys only its adapter understands."""

    name: str
    type: str
    timeout_s: float
    connect_timeout_s: float = 5.0
    retries: int = 2
    breaker: BreakerConfig = BreakerConfig()
    outbound_limit: Rate | None = None
    outbound_wait_s: float = 5.0
    max_in_flight: int = 1024
    required: bool = False
    """Whether /health/ready fails while this backend is unhealthy."""
    max_rows: int = 10_000
    """Data backends: the most rows one query may answer, whatever the request asks."""
    raw_sql: bool = True
    """Data backends: whether ``POST /v1/query`` may send SQL here (datasets always may)."""
    apis: frozenset[str] = frozenset()
    """LLM backends: the OpenAI APIs it serves (`APIS`); set from the provider when unset."""
    max_response_bytes: int = 64 * 1024 * 1024
    """Data backends: the most bytes of rows one answer may carry, counted while fetching."""
    max_sql_depth: int = 32
    """Data backends: how deeply ``POST /v1/query`` SQL may nest (parentheses, CASE, NOT)."""
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    backend: str
    upstream_model: str
    fallbacks: tuple[str, ...] = ()
    apis: frozenset[str] | None = None
    """The APIs this model serves, among its backend's; None: all of its backend's."""
    prefill: bool = False
    """Whether the model continues a trailing assistant message (a stream cut mid-answer
    is then continued there rather than regenerated)."""
    prefill_body: Mapping[str, Any] = field(default_factory=dict)
    """Extra top-level fields a continuation request carries, e.g. vLLM's
    ``continue_final_message: true`` and ``add_generation_prompt: false``."""


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    name: str
    backend: str
    table: str | None
    sql: str | None
    tenant_column: str | None
    dimensions: Mapping[str, str]
    metrics: Mapping[str, str]
    time_dimension: str | None = None
    key: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyConfig:
    id: str
    hash: str
    tenant: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    datasets: frozenset[str] | None = None
    limits: tuple[Rate, ...] | None = None
    budget_tokens: tuple[Rate, ...] = ()
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    limits: LimitsConfig
    cache: CacheConfig = CacheConfig()
    odata: ODataConfig = ODataConfig()
    state: str = DEFAULT_STATE
    redis: str | None = None
    redis_prefix: str = "tollway:"
    """Every Redis key Tollway writes starts with this (several deployments, one Redis)."""
    state_spill_dir: str = "./tollway-spill"
    """Where usage and audit records wait on disk while the state store is away."""
    secret_keys: tuple[str, ...] = ()
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)
    keys: tuple[KeyConfig, ...] = ()
    source: str = "<embedded default>"
    demo_key: str | None = None
    """Set only for the embedded default: the key printed once at start."""
    providers: tuple[tuple[str, str, bool], ...] = ()
    """Set only for the embedded default: (provider, environment variable, found) for each
    provider it serves when that variable holds a key."""
    unconfigured: Mapping[str, str] = field(default_factory=dict)
    """Route kind (``llm``, ``search``) → what to do to serve it, for the error those routes
    answer while no backend of the kind is configured (the embedded default names the
    environment variables)."""
