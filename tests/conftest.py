"""Shared fixtures: configs with known keys, the real app under `aiohttp_client`."""

from __future__ import annotations

import atexit
import copy
import io
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config, parse_config
from gateway.config.keyhash import hash_key
from gateway.ops.logs import configure_logging
from tests.services import (  # noqa: F401 - fixtures every test module may use
    IN_CI,
    fake,
    own_redis,
    pg_database,
    pg_databases,
    redis_prefix,
    skip_or_fail,
    throwaway_cluster,
)

ADMIN_KEY = "tw_test-admin-0123456789abcdefghijklmnop"
USER_KEY = "tw_test-user-0123456789abcdefghijklmnopq"
OTHER_TENANT_KEY = "tw_test-other-0123456789abcdefghijklmno"


_SPILL_DIR = tempfile.mkdtemp(prefix="tollway-test-spill-")
atexit.register(shutil.rmtree, _SPILL_DIR, True)


def base_config_data() -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "state": "sqlite:///:memory:",
        # not ./tollway-spill: test processes run side by side and must not share spill files
        "state_spill_dir": _SPILL_DIR,
        "limits": {"default": ["1000/minute", "10000/hour"]},
        "keys": [
            {"id": "admin", "hash": hash_key(ADMIN_KEY), "tenant": "ops", "scopes": ["admin"]},
            {
                "id": "app-1",
                "hash": hash_key(USER_KEY),
                "tenant": "acme",
                "scopes": ["llm", "search", "query", "odata"],
            },
            {
                "id": "app-2",
                "hash": hash_key(OTHER_TENANT_KEY),
                "tenant": "globex",
                "scopes": ["llm", "search", "query", "odata"],
            },
        ],
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` laid over `base`, mappings merged key by key, other values replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_config(extra: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Config:
    return parse_config(merge(base_config_data(), extra or {}), env=env or {}, source="test")


@pytest.fixture
def auth() -> Callable[[str], dict[str, str]]:
    return lambda key: {"Authorization": f"Bearer {key}"}


@pytest.fixture
def app_factory() -> Callable[..., web.Application]:
    def build(extra: dict[str, Any] | None = None) -> web.Application:
        return create_app(make_config(extra))

    return build


@pytest.fixture
async def client(aiohttp_client: Any, app_factory: Callable[..., web.Application]) -> TestClient:
    return await aiohttp_client(app_factory())


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[str]]]:
    """Everything logged during the test, one JSON object per line."""
    stream = io.StringIO()
    handler = configure_logging("debug", stream)
    yield lambda: [line for line in stream.getvalue().splitlines() if line]
    logging.getLogger().removeHandler(handler)
