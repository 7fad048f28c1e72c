"""The configuration: one YAML file, parsed once into frozen, typed objects.

`load_config()` reads the file (or builds the embedded default when there is none),
substitutes ``${ENV_VAR}`` / ``${ENV_VAR:-default}`` in text values, applies the
``TOLLWAY_*`` overrides and validates everything. A wrong file raises `ConfigError`
whose message is one line naming the key at fault. This is the only module that reads
the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml

from gateway.config_reader import ConfigError, Section, parse_rates
from gateway.rates import Rate

__all__ = [
    "BackendConfig",
    "BreakerConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DatasetConfig",
    "KeyConfig",
    "LimitsConfig",
    "ModelConfig",
    "ODataConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
]

SCOPES: Final = ("llm", "search", "query", "odata", "admin")
BACKEND_TYPES: Final = ("openai", "tavily", "postgres", "duckdb")
ROUTE_CLASSES: Final = (
    "chat", "embeddings", "models", "search", "query", "datasets", "odata", "admin",
)  # fmt: skip
DEFAULT_STATE: Final = "sqlite:///./tollway-state.db"
DEFAULT_LIMITS: Final = ("60/minute", "1000/hour")
DEFAULT_PER_IP: Final = ("60/minute", "1000/hour")
DEFAULT_PER_IP_AUTHENTICATED: Final = ("6000/minute", "100000/hour")
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HASH: Final = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024
    shutdown_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    console: bool = False
    log_level: str = "info"
    workers: int = 1
    replicas: int = 1
    compression: bool = True
    compression_min_bytes: int = 1024
    compression_offload_bytes: int = 256 * 1024
    slow_request_s: float = 1.0
    sentry_dsn: str | None = None
    max_url_bytes: int = 8190
    max_header_bytes: int = 8190
    max_headers: int = 100
    header_timeout_s: float = 15.0
    """How many Tollway processes share this config (set by the deployment); >1 wants Redis."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    default: tuple[Rate, ...]
    routes: Mapping[str, tuple[Rate, ...]] = field(default_factory=dict)
    per_ip: tuple[Rate, ...] = ()
    """Per client IP, before auth: unauthenticated and failed-auth requests."""
    per_ip_authenticated: tuple[Rate, ...] = ()
    """Per client IP for authenticated traffic: higher, so many users behind one NAT fit."""


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


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5
    reset_s: float = 60.0


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
    max_rows: int = 10_000
    """Data backends: the most rows one query may answer, whatever the request asks."""
    raw_sql: bool = True
    """Data backends: whether ``POST /v1/query`` may send SQL here (datasets always may)."""
    """Whether /health/ready fails while this backend is unhealthy."""
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    backend: str
    upstream_model: str
    fallbacks: tuple[str, ...] = ()


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
    state_spill_dir: str = "./tollway-spill"
    """Where usage and audit records wait on disk while the state store is away."""
    """Every Redis key Tollway writes starts with this (several deployments, one Redis)."""
    secret_keys: tuple[str, ...] = ()
    backends: Mapping[str, BackendConfig] = field(default_factory=dict)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)
    keys: tuple[KeyConfig, ...] = ()
    source: str = "<embedded default>"
    demo_key: str | None = None
    """Set only for the embedded default: the key printed once at start."""


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute, override and validate; `path=None` uses ``TOLLWAY_CONFIG`` or the
    embedded default."""
    env = os.environ if env is None else env
    path = path or env.get("TOLLWAY_CONFIG") or None
    if path is None:
        from gateway.embedded import embedded_config_data

        data, demo_key = embedded_config_data()
        config = parse_config(data, env=env, source="<embedded default>")
        return replace(config, demo_key=demo_key)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"{path} is not valid YAML{where}") from None
    return parse_config(data, env=env, source=str(path))


def parse_config(data: Any, *, env: Mapping[str, str], source: str) -> Config:
    """Validate parsed YAML into a `Config`; raise `ConfigError` naming the key at fault."""
    data = _substitute(data if data is not None else {}, "", env)
    root = Section(data, "")
    _apply_overrides(root, data, env)

    server = _server(root.section("server"))
    limits = _limits(root.section("limits"))
    cache = _cache(root.section("cache"))
    odata = _odata(root.section("odata"))
    backends = root.each("backends", _backend)
    models = root.each("models", _model)
    datasets = root.each("datasets", _dataset)
    keys = _keys(root)
    config = Config(
        server=server,
        limits=limits,
        cache=cache,
        odata=odata,
        state=root.string("state", DEFAULT_STATE),
        redis=root.string("redis", None),
        redis_prefix=root.string("redis_prefix", "tollway:"),
        state_spill_dir=root.string("state_spill_dir", "./tollway-spill"),
        secret_keys=tuple(k for k in env.get("TOLLWAY_SECRET_KEY", "").split(",") if k.strip()),
        backends=MappingProxyType(backends),
        models=MappingProxyType(models),
        datasets=MappingProxyType(datasets),
        keys=keys,
        source=source,
    )
    root.reject_unknown()
    _check_references(config)
    if cache.backend == "redis" and config.redis is None:
        raise ConfigError("cache.backend", "redis needs the top-level `redis:` URL")
    return config


def _substitute(value: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _ENV_REF.sub(lookup, value)
    if isinstance(value, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value


_OVERRIDES: Final = {
    "TOLLWAY_HOST": ("server", "host", str),
    "TOLLWAY_PORT": ("server", "port", int),
    "TOLLWAY_LOG_LEVEL": ("server", "log_level", str),
    "TOLLWAY_WORKERS": ("server", "workers", int),
    "TOLLWAY_REPLICAS": ("server", "replicas", int),
    "TOLLWAY_SENTRY_DSN": ("server", "sentry_dsn", str),
    "TOLLWAY_REDIS_URL": (None, "redis", str),
    "TOLLWAY_STATE_URL": (None, "state", str),
}


def _apply_overrides(root: Section, data: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, (section, key, kind) in _OVERRIDES.items():
        if var not in env:
            continue
        try:
            value = kind(env[var])
        except ValueError:
            raise ConfigError(var, f"expected a whole number, got {env[var]!r}") from None
        target = data if section is None else data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(section or "", "expected a mapping")
        target[key] = value


def _server(s: Section) -> ServerConfig:
    d = ServerConfig()
    config = ServerConfig(
        host=s.string("host", d.host),
        port=s.number("port", d.port, integer=True, minimum=0),
        max_body_bytes=s.number("max_body_bytes", d.max_body_bytes, integer=True, minimum=1),
        shutdown_timeout_s=s.number("shutdown_timeout_s", d.shutdown_timeout_s),
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
    )
    if config.port > 65535:
        raise ConfigError("server.port", f"must be at most 65535, got {config.port}")
    _check_proxies(config.trusted_proxies)
    s.reject_unknown()
    return config


def _check_proxies(proxies: tuple[str, ...]) -> None:
    import ipaddress

    for index, entry in enumerate(proxies):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies[{index}]", f'expected an IP or CIDR, got "{entry}"'
            ) from None


def _limits(s: Section) -> LimitsConfig:
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
    )
    s.reject_unknown()
    return config


def _cache(s: Section) -> CacheConfig:
    d = CacheConfig()
    routes = s.strings("routes", tuple(sorted(d.routes)))
    for index, name in enumerate(routes):
        if name not in ROUTE_CLASSES:
            raise ConfigError(f"cache.routes[{index}]", f'unknown route class "{name}"')
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


def _odata(s: Section) -> ODataConfig:
    d = ODataConfig()
    config = ODataConfig(
        page_size=s.number("page_size", d.page_size, integer=True, minimum=1),
        max_page_size=s.number("max_page_size", d.max_page_size, integer=True, minimum=1),
        key_param=s.string("key_param", None),
    )
    if config.page_size > config.max_page_size:
        raise ConfigError("odata.page_size", "must not exceed odata.max_page_size")
    s.reject_unknown()
    return config


_BACKEND_COMMON: Final = {
    "type", "timeout_s", "connect_timeout_s", "retries", "breaker", "outbound_limit",
    "outbound_wait_s", "max_in_flight", "required", "max_rows", "raw_sql",
}  # fmt: skip


def _backend(name: str, s: Section) -> BackendConfig:
    kind = s.choice("type", BACKEND_TYPES)
    breaker = s.section("breaker")
    outbound = s.string("outbound_limit", None)
    config = BackendConfig(
        name=name,
        type=kind,
        timeout_s=s.number("timeout_s", 120.0 if kind in ("openai", "tavily") else 30.0),
        connect_timeout_s=s.number("connect_timeout_s", 5.0),
        retries=s.number("retries", 2, integer=True),
        breaker=BreakerConfig(
            failures=breaker.number("failures", 5, integer=True, minimum=1),
            reset_s=breaker.number("reset_s", 60.0),
        ),
        outbound_limit=(
            parse_rates((outbound,), s.key_path("outbound_limit"))[0] if outbound else None
        ),
        outbound_wait_s=s.number("outbound_wait_s", 5.0),
        max_in_flight=s.number("max_in_flight", 1024, integer=True, minimum=1),
        required=s.boolean("required", False),
        max_rows=s.number("max_rows", 10_000, integer=True, minimum=1),
        raw_sql=s.boolean("raw_sql", True),
        options=MappingProxyType({k: s.raw(k) for k in s.keys() if k not in _BACKEND_COMMON}),
    )
    breaker.reject_unknown()
    from gateway.adapters import create_backend

    create_backend(config)  # validates the adapter's own options; no I/O
    return config


def _model(name: str, s: Section) -> ModelConfig:
    config = ModelConfig(
        name=name,
        backend=s.string("backend"),
        upstream_model=s.string("model", name),
        fallbacks=s.strings("fallbacks", ()),
    )
    s.reject_unknown()
    return config


def _dataset(name: str, s: Section) -> DatasetConfig:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
        raise ConfigError(s.key_path(""), "dataset names are letters, digits and _")

    def mapping(key: str) -> Mapping[str, str]:
        group = s.section(key)
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


def _keys(root: Section) -> tuple[KeyConfig, ...]:
    raw = root.raw("keys", [])
    if not isinstance(raw, list):
        raise ConfigError("keys", "expected a list")
    keys: list[KeyConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        s = Section(entry, f"keys[{index}]")
        key_hash = s.string("hash").lower()
        if not _HASH.match(key_hash):
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


def _check_references(config: Config) -> None:
    for name, model in config.models.items():
        if model.backend not in config.backends:
            raise ConfigError(f"models.{name}.backend", f'no backend named "{model.backend}"')
        for fallback in model.fallbacks:
            if fallback not in config.models:
                raise ConfigError(f"models.{name}.fallbacks", f'no model named "{fallback}"')
    from gateway.datasets import Dataset
    from gateway.errors import BadRequest

    for name, dataset in config.datasets.items():
        backend = config.backends.get(dataset.backend)
        if backend is None:
            raise ConfigError(f"datasets.{name}.backend", f'no backend named "{dataset.backend}"')
        if backend.type not in ("postgres", "duckdb"):
            raise ConfigError(
                f"datasets.{name}.backend", f'"{dataset.backend}" is not a data backend'
            )
        try:
            Dataset.from_config(dataset, backend.type)
        except BadRequest as exc:
            raise ConfigError(f"datasets.{name}", exc.message) from None
