"""Typed, path-aware reading of the parsed YAML, so every error names the key at fault."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gateway.config.rates import Rate, parse_rate

__all__ = ["ConfigError", "Section"]

T = TypeVar("T")
_MISSING: Any = object()


class ConfigError(Exception):
    """A wrong config file. `str()` is one line: ``key.path: what is wrong``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class Section:
    """One mapping of the config and the dotted path that leads to it."""

    __slots__ = ("_data", "_path", "_used")

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a mapping, got {_describe(data)}")
        self._data: Mapping[str, Any] = data
        self._path = path
        self._used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._used.add(key)
        if key in self._data and self._data[key] is not None:
            return self._data[key]
        if default is _MISSING:
            raise ConfigError(self.key_path(key), "is required")
        return default

    def has(self, key: str) -> bool:
        return key in self._data and self._data[key] is not None

    def section(self, key: str) -> Section:
        return Section(self.raw(key, {}), self.key_path(key))

    def keys(self) -> list[str]:
        return [str(k) for k in self._data]

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise ConfigError(self.key_path(key), f"expected text, got {_describe(value)}")
        return value

    def number(
        self, key: str, default: Any = _MISSING, *, minimum: float = 0.0, integer: bool = False
    ) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        kind = "a whole number" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key_path(key), f"expected {kind}, got {_describe(value)}")
        if integer and not isinstance(value, int):
            raise ConfigError(self.key_path(key), f"expected {kind}, got {_describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(self.key_path(key), f"expected a finite number, got {value}")
        if value < minimum:
            raise ConfigError(self.key_path(key), f"must be at least {minimum:g}, got {value}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key_path(key), f"expected true or false, got {_describe(value)}")
        return value

    def strings(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self.raw(key, default)
        if isinstance(value, tuple):
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                self.key_path(key), f"expected a list of text, got {_describe(value)}"
            )
        return tuple(value)

    def choice(self, key: str, options: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.string(key, default)
        if value not in options:
            raise ConfigError(
                self.key_path(key), f"expected one of {', '.join(options)}, got {_describe(value)}"
            )
        return value

    def rates(self, key: str, default: Any = _MISSING) -> tuple[Rate, ...]:
        texts = self.strings(key, default)
        return parse_rates(texts, self.key_path(key))

    def each(self, key: str, build: Callable[[str, Section], T]) -> dict[str, T]:
        """Build one object per entry of the mapping under `key`."""
        group = self.section(key)
        return {name: build(name, group.section(name)) for name in group.keys()}

    def reject_unknown(self, allowed: set[str] | None = None) -> None:
        """Refuse keys nobody reads: a typo must not be silently ignored."""
        known = self._used if allowed is None else allowed | self._used
        for key in self._data:
            if key not in known:
                raise ConfigError(self.key_path(str(key)), "unknown key")


def parse_rates(texts: tuple[str, ...], path: str) -> tuple[Rate, ...]:
    rates = []
    for index, text in enumerate(texts):
        try:
            rates.append(parse_rate(text))
        except ValueError as exc:
            raise ConfigError(f"{path}[{index}]", str(exc)) from None
    return tuple(rates)
