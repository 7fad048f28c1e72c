"""The configuration: one YAML file, read once into frozen, typed objects.

What lives here: the typed config (`model`), its reader (`load`, `sections`, `reader`),
rates (``60/minute``), the stored form of API keys (`keyhash`) and the embedded default
(`defaults`). It may import nothing from the rest of Tollway: everything else reads
config, config reads nobody. It never builds backends or datasets; whoever needs one
builds it from these objects (the app factory, the backend registry).
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import model
from gateway.config.load import load_config, parse_config
from gateway.config.model import *  # noqa: F403 - the typed config is this package's face
from gateway.config.model import Config
from gateway.config.reader import ConfigError

__all__ = [*model.__all__, "ConfigError", "config_key", "load_config", "parse_config"]

config_key = web.AppKey("config", Config)
