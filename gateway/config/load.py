"""Reading the configuration: one YAML file (or the embedded default), ``${ENV_VAR}``
substitution, the ``TOLLWAY_*`` overrides, then validation into `Config`.

This is the only module that reads the environment. It checks the file's shape and its
references (a model's backend exists, a dataset sits on a data backend); the options
only an adapter understands, and a dataset's SQL, are checked by whoever builds the
backend or the dataset (`gateway.app.check_config`), which `tollway check-config` runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml

from gateway.config.defaults import embedded_config_data
from gateway.config.model import DEFAULT_STATE, Config
from gateway.config.reader import ConfigError, Section
from gateway.config.sections import (
    backend_config,
    cache_config,
    dataset_config,
    key_configs,
    limits_config,
    model_config,
    odata_config,
    server_config,
)

__all__ = ["load_config", "parse_config"]

_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute, override and validate; `path=None` uses ``TOLLWAY_CONFIG`` or the
    embedded default."""
    env = os.environ if env is None else env
    path = path or env.get("TOLLWAY_CONFIG") or None
    if path is None:
        default = embedded_config_data(env)
        config = parse_config(default.data, env=env, source="<embedded default>")
        return replace(
            config,
            demo_key=default.demo_key,
            providers=default.providers,
            unconfigured=MappingProxyType(default.unconfigured),
        )
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

    server = server_config(root.section("server"))
    limits = limits_config(root.section("limits"))
    cache = cache_config(root.section("cache"))
    odata = odata_config(root.section("odata"), env)
    backends = root.each("backends", backend_config)
    models = root.each("models", model_config)
    datasets = root.each("datasets", dataset_config)
    keys = key_configs(root)
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


def _check_references(config: Config) -> None:
    for name, model in config.models.items():
        if model.backend not in config.backends:
            raise ConfigError(f"models.{name}.backend", f'no backend named "{model.backend}"')
        lacking = sorted((model.apis or frozenset()) - config.backends[model.backend].apis)
        if lacking:
            raise ConfigError(
                f"models.{name}.apis",
                f'backend "{model.backend}" does not serve {", ".join(lacking)} (its apis)',
            )
        for fallback in model.fallbacks:
            if fallback not in config.models:
                raise ConfigError(f"models.{name}.fallbacks", f'no model named "{fallback}"')
    for name, dataset in config.datasets.items():
        backend = config.backends.get(dataset.backend)
        if backend is None:
            raise ConfigError(f"datasets.{name}.backend", f'no backend named "{dataset.backend}"')
        if backend.type not in ("postgres", "duckdb"):
            raise ConfigError(
                f"datasets.{name}.backend", f'"{dataset.backend}" is not a data backend'
            )
