"""One builder per section of the config file, each naming the key at fault."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from gateway.config.model import (
    APIS,
    BACKEND_TYPES,
    DEFAULT_KEY_LOOKUPS_PER_IP,
    DEFAULT_LIMITS,
    DEFAULT_PER_IP,
    DEFAULT_PER_IP_AUTHENTICATED,
    KEY_HASH,
    ROUTE_CLASSES,
    SCOPES,
    BackendConfig,
    BreakerConfig,
    CacheConfig,
    DatasetConfig,
    KeyConfig,
    LimitsConfig,
    ModelConfig,
    ODataConfig,
    ServerConfig,
)
from gateway.config.reader import ConfigError, Section, parse_rates

__all__ = [
    "backend_config",
    "cache_config",
    "dataset_config",
    "key_configs",
    "limits_config",
    "model_config",
    "odata_config",
    "server_config",
]


def server_config(s: Section) -> ServerConfig:
    d = ServerConfig()
    config = ServerConfig(
        host=s.string("host", d.host),
        port=s.number("port", d.port, integer=True, minimum=0),
        max_body_bytes=s.number("max_body_bytes", d.max_body_bytes, integer=True, minimum=1),
        shutdown_timeout_s=s.number("shutdown_timeout_s", d.shutdown_timeout_s),
        stream_drain_share=s.number("stream_drain_share", d.stream_drain_share),
        drain_idle_s=s.number("drain_idle_s", d.drain_idle_s),
        keepalive_timeout_s=s.number("keepalive_timeout_s", d.keepalive_timeout_s, minimum=1),
        cors_origins=s.strings("cors_origins", d.cors_origins),
        trusted_proxies=s.strings("trusted_proxies", d.trusted_proxies),
        console=s.boolean("console", d.console),
        log_level=s.choice("log_level", ("debug", "info", "warning", "error"), d.log_level),
        workers=s.number("workers", d.workers, integer=True, minimum=1),
        replicas=s.number("replicas", d.replicas, integer=True, minimum=1),
        compression=s.boolean("compression", d.compression),
        compression_min_bytes=s.number(
            "compression_min_bytes", d.compression_min_bytes, integer=True, minimum=0
        ),
        compression_offload_bytes=s.number(
            "compression_offload_bytes", d.compression_offload_bytes, integer=True, minimum=0
        ),
        slow_request_s=s.number("slow_request_s", d.slow_request_s),
        sentry_dsn=s.string("sentry_dsn", None) or None,
        max_url_bytes=s.number("max_url_bytes", d.max_url_bytes, integer=True, minimum=256),
        max_header_bytes=s.number(
            "max_header_bytes", d.max_header_bytes, integer=True, minimum=256
        ),
        max_headers=s.number("max_headers", d.max_headers, integer=True, minimum=8),
        header_timeout_s=s.number("header_timeout_s", d.header_timeout_s, minimum=0),
        audio_max_bytes=s.number("audio_max_bytes", d.audio_max_bytes, integer=True, minimum=1),
        responses_ttl_s=s.number("responses_ttl_s", d.responses_ttl_s, minimum=1),
        unknown_key_cache_s=s.number("unknown_key_cache_s", d.unknown_key_cache_s),
        key_lookup_timeout_s=s.number("key_lookup_timeout_s", d.key_lookup_timeout_s),
        refusal_logs_per_minute=s.number(
            "refusal_logs_per_minute", d.refusal_logs_per_minute, integer=True, minimum=1
        ),
    )
    if config.port > 65535:
        raise ConfigError("server.port", f"must be at most 65535, got {config.port}")
    if not 0 < config.stream_drain_share <= 1:
        raise ConfigError(
            "server.stream_drain_share",
            f"must be more than 0 and at most 1, got {config.stream_drain_share}",
        )
    _check_proxies(config.trusted_proxies)
    s.reject_unknown()
    return config


def _check_proxies(proxies: tuple[str, ...]) -> None:
    for index, entry in enumerate(proxies):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies[{index}]", f'expected an IP or CIDR, got "{entry}"'
            ) from None


def limits_config(s: Section) -> LimitsConfig:
    default = s.rates("default", DEFAULT_LIMITS)
    routes = s.section("routes")
    per_route = {}
    for name in routes.keys():
        if name not in ROUTE_CLASSES:
            raise ConfigError(
                routes.key_path(name), f"unknown route class ({', '.join(ROUTE_CLASSES)})"
            )
        per_route[name] = routes.rates(name)
    config = LimitsConfig(
        default=default,
        routes=MappingProxyType(per_route),
        per_ip=s.rates("per_ip", DEFAULT_PER_IP),
        per_ip_authenticated=s.rates("per_ip_authenticated", DEFAULT_PER_IP_AUTHENTICATED),
        redis_lease_s=s.number("redis_lease_s", 1.0),
        key_lookups_per_ip=s.rates("key_lookups_per_ip", DEFAULT_KEY_LOOKUPS_PER_IP),
    )
    s.reject_unknown()
    return config


def cache_config(s: Section) -> CacheConfig:
    d = CacheConfig()
    routes = s.strings("routes", tuple(sorted(d.routes)))
    for index, name in enumerate(routes):
        if name not in ROUTE_CLASSES:
            raise ConfigError(f"cache.routes[{index}]", f'unknown route class "{name}"')
        if name in _NEVER_CACHED:
            raise ConfigError(f"cache.routes[{index}]", f'"{name}" answers are never cached')
    config = CacheConfig(
        backend=s.choice("backend", ("memory", "redis"), d.backend),
        ttl_s=s.number("ttl_s", d.ttl_s),
        max_rows=s.number("max_rows", d.max_rows, integer=True),
        max_entry_bytes=s.number("max_entry_bytes", d.max_entry_bytes, integer=True),
        max_entries=s.number("max_entries", d.max_entries, integer=True),
        max_bytes=s.number("max_bytes", d.max_bytes, integer=True),
        routes=frozenset(routes),
    )
    s.reject_unknown()
    return config


DEFAULT_PAGE_LIMITS: Final = ("6000/minute", "200000/hour")
MAX_FILTER_DEPTH: Final = 100
"""Past this, parsing and compiling a filter would come near Python's recursion limit."""
MIN_SECRET_CHARS: Final = 16


def odata_config(s: Section, env: Mapping[str, str] | None = None) -> ODataConfig:
    d = ODataConfig()
    secret = s.string("skiptoken_secret", None)
    if secret is None:
        secret = (env or {}).get("TOLLWAY_ODATA_SECRET", "")
    secrets = tuple(part.strip() for part in secret.split(",") if part.strip())
    if any(len(part) < MIN_SECRET_CHARS for part in secrets):
        raise ConfigError(
            "odata.skiptoken_secret",
            f"each comma-separated secret needs at least {MIN_SECRET_CHARS} characters",
        )
    config = ODataConfig(
        page_size=s.number("page_size", d.page_size, integer=True, minimum=1),
        max_page_size=s.number("max_page_size", d.max_page_size, integer=True, minimum=1),
        key_param=s.string("key_param", None),
        skiptoken_secrets=secrets,
        max_filter_depth=s.number("max_filter_depth", d.max_filter_depth, integer=True, minimum=1),
        page_limits=s.rates("page_limits", DEFAULT_PAGE_LIMITS),
    )
    if config.page_size > config.max_page_size:
        raise ConfigError("odata.page_size", "must not exceed odata.max_page_size")
    if config.max_filter_depth > MAX_FILTER_DEPTH:
        raise ConfigError("odata.max_filter_depth", f"must be at most {MAX_FILTER_DEPTH}")
    s.reject_unknown()
    return config


_NEVER_CACHED: Final = frozenset({"images", "audio"})
"""Route classes whose answers are media (megabytes, or a different answer each time)."""

_BACKEND_COMMON: Final = {
    "type", "timeout_s", "connect_timeout_s", "retries", "breaker", "outbound_limit",
    "outbound_wait_s", "max_in_flight", "required", "max_rows", "raw_sql", "apis",
    "max_response_bytes", "max_sql_depth",
}  # fmt: skip
MAX_SQL_DEPTH: Final = 40
"""sqlglot's parser takes ~20 Python frames per level: deeper would near the recursion limit."""

_PROVIDER_APIS: Final = {
    "api.openai.com": frozenset(APIS),
    "api.groq.com": frozenset({"chat", "responses", "audio"}),
}
"""What a known provider serves, for a backend whose config does not say (``apis``). Any
other OpenAI-compatible server is taken to serve every API: its own answer decides."""


def _apis(s: Section, key: str, default: frozenset[str] | None) -> frozenset[str] | None:
    if not s.has(key):
        return default
    names = s.strings(key)
    for index, name in enumerate(names):
        if name not in APIS:
            raise ConfigError(
                f"{s.key_path(key)}[{index}]", f'unknown API "{name}" ({", ".join(APIS)})'
            )
    return frozenset(names)


def _provider_apis(kind: str, options: Mapping[str, object]) -> frozenset[str]:
    if kind != "openai":
        return frozenset()
    base_url = options.get("base_url")
    host = re.sub(r"^[a-z]+://", "", base_url).split("/")[0] if isinstance(base_url, str) else ""
    return _PROVIDER_APIS.get(host.split(":")[0], frozenset(APIS)) if host else frozenset(APIS)


_BREAKER_DEFAULTS: Final = BreakerConfig()


def backend_config(name: str, s: Section) -> BackendConfig:
    kind = s.choice("type", BACKEND_TYPES)
    breaker = s.section("breaker")
    reset_s = breaker.number("reset_s", _BREAKER_DEFAULTS.reset_s)
    outbound = s.string("outbound_limit", None)
    options = MappingProxyType({k: s.raw(k) for k in s.keys() if k not in _BACKEND_COMMON})
    if s.has("apis") and kind != "openai":
        raise ConfigError(s.key_path("apis"), "only LLM backends (type: openai) serve APIs")
    config = BackendConfig(
        name=name,
        type=kind,
        timeout_s=s.number("timeout_s", 120.0 if kind in ("openai", "tavily") else 30.0),
        connect_timeout_s=s.number("connect_timeout_s", 5.0),
        retries=s.number("retries", 2, integer=True),
        breaker=BreakerConfig(
            failures=breaker.number("failures", 5, integer=True, minimum=1),
            reset_s=reset_s,
            # unset: the default cap, or no growth for a longer reset_s
            max_reset_s=breaker.number("max_reset_s", max(reset_s, _BREAKER_DEFAULTS.max_reset_s)),
        ),
        outbound_limit=(
            parse_rates((outbound,), s.key_path("outbound_limit"))[0] if outbound else None
        ),
        outbound_wait_s=s.number("outbound_wait_s", 5.0),
        max_in_flight=s.number("max_in_flight", 1024, integer=True, minimum=1),
        required=s.boolean("required", False),
        max_rows=s.number("max_rows", 10_000, integer=True, minimum=1),
        raw_sql=s.boolean("raw_sql", True),
        apis=_apis(s, "apis", _provider_apis(kind, options)) or frozenset(),
        max_response_bytes=s.number(
            "max_response_bytes", 64 * 1024 * 1024, integer=True, minimum=1024
        ),
        max_sql_depth=s.number("max_sql_depth", 32, integer=True, minimum=1),
        options=options,
    )
    if config.breaker.max_reset_s < config.breaker.reset_s:
        raise ConfigError(breaker.key_path("max_reset_s"), "must be at least reset_s")
    breaker.reject_unknown()
    if config.max_sql_depth > MAX_SQL_DEPTH:
        raise ConfigError(s.key_path("max_sql_depth"), f"must be at most {MAX_SQL_DEPTH}")
    return config


def model_config(name: str, s: Section) -> ModelConfig:
    extra = s.section("prefill_body")
    config = ModelConfig(
        name=name,
        backend=s.string("backend"),
        upstream_model=s.string("model", name),
        fallbacks=s.strings("fallbacks", ()),
        apis=_apis(s, "apis", None),
        prefill=s.boolean("prefill", False),
        prefill_body=MappingProxyType({k: extra.raw(k) for k in extra.keys()}),
    )
    for key in ("model", "messages", "stream", "stream_options"):
        if key in config.prefill_body:
            raise ConfigError(extra.key_path(key), "set by Tollway, not by the config")
    s.reject_unknown()
    return config


def dataset_config(name: str, s: Section) -> DatasetConfig:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
        raise ConfigError(s.key_path(""), "dataset names are letters, digits and _")

    def mapping(key: str) -> Mapping[str, str]:
        group = s.section(key)
        for field_ in group.keys():  # OData property names are SimpleIdentifiers
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", field_):
                raise ConfigError(group.key_path(field_), "field names are letters, digits and _")
        return MappingProxyType({field_: group.string(field_) for field_ in group.keys()})

    config = DatasetConfig(
        name=name,
        backend=s.string("backend"),
        table=s.string("table", None),
        sql=s.string("sql", None),
        tenant_column=s.string("tenant_column", None),
        dimensions=mapping("dimensions"),
        metrics=mapping("metrics"),
        time_dimension=s.string("time_dimension", None),
        key=s.strings("key", ()),
    )
    if (config.table is None) == (config.sql is None):
        raise ConfigError(s.key_path("table"), "give exactly one of `table` or `sql`")
    s.reject_unknown()
    return config


def key_configs(root: Section) -> tuple[KeyConfig, ...]:
    raw = root.raw("keys", [])
    if not isinstance(raw, list):
        raise ConfigError("keys", "expected a list")
    keys: list[KeyConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        s = Section(entry, f"keys[{index}]")
        key_hash = s.string("hash").lower()
        if not KEY_HASH.match(key_hash):
            raise ConfigError(s.key_path("hash"), 'expected "sha256:" and 64 hex digits')
        scopes = s.strings("scopes")
        for scope in scopes:
            if scope not in SCOPES:
                raise ConfigError(s.key_path("scopes"), f'unknown scope "{scope}"')
        budget = s.section("budget")
        key = KeyConfig(
            id=s.string("id"),
            hash=key_hash,
            tenant=s.string("tenant"),
            scopes=frozenset(scopes),
            models=frozenset(s.strings("models")) if s.has("models") else None,
            datasets=frozenset(s.strings("datasets")) if s.has("datasets") else None,
            limits=s.rates("limits") if s.has("limits") else None,
            budget_tokens=budget.rates("tokens", ()),
            name=s.string("name", None),
        )
        budget.reject_unknown()
        s.reject_unknown()
        if key.id in seen:
            raise ConfigError(s.key_path("id"), f'duplicate key id "{key.id}"')
        seen.add(key.id)
        keys.append(key)
    return tuple(keys)
