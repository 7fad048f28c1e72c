"""The config file: parsed once into typed objects; a wrong file names the key at fault."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.conftest import make_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tollway.yaml"
    path.write_text(text)
    return str(path)


def test_design_example_loads_with_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server: {host: 0.0.0.0, port: 9000, cors_origins: ["https://app.example.com"]}
limits:
  default: ["60/minute", "1000/hour"]
  routes: {query: ["60/minute"], odata: ["120/minute"]}
state: ${STATE_URL}
keys:
  - id: app-1
    hash: sha256:0000000000000000000000000000000000000000000000000000000000000000
    tenant: acme
    scopes: [llm]
    limits: ["120/minute"]
    budget: {tokens: ["1000000/day"]}
""",
    )
    config = load_config(path, env={"STATE_URL": "postgresql://u@db/tollway"})
    assert config.server.port == 9000
    assert config.state == "postgresql://u@db/tollway"
    assert config.keys[0].limits is not None and config.keys[0].limits[0].period_s == 60
    assert config.keys[0].budget_tokens[0].period_s == 86400
    assert config.limits.routes["odata"][0].count == 120


def test_env_default_is_used_when_variable_is_unset() -> None:
    config = parse_config({"redis": "${REDIS_URL:-redis://127.0.0.1:6379/0}"}, env={}, source="t")
    assert config.redis == "redis://127.0.0.1:6379/0"


def test_missing_env_variable_names_the_key() -> None:
    data = {"backends": {"groq": {"type": "openai", "api_key": "${GROQ_API_KEY}"}}}
    with pytest.raises(ConfigError, match=r"^backends\.groq\.api_key: environment variable"):
        parse_config(data, env={}, source="t")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"backends": {"groq": {"type": "openai", "timeout_s": "fast"}}},
         'backends.groq.timeout_s: expected a number, got "fast"'),
        ({"server": {"port": "eighty"}}, 'server.port: expected a whole number, got "eighty"'),
        ({"server": {"prot": 80}}, "server.prot: unknown key"),
        ({"limits": {"default": ["60/fortnight"]}}, "limits.default[0]: unknown time unit"),
        ({"backends": {"x": {"type": "mysql"}}}, "backends.x.type: expected one of"),
        ({"models": {"m": {"backend": "nope"}}}, 'models.m.backend: no backend named "nope"'),
        ({"keys": [{"id": "a", "hash": "md5:x", "tenant": "t", "scopes": ["llm"]}]},
         "keys[0].hash: expected"),
        ({"keys": [{"id": "a", "hash": "sha256:" + "0" * 64, "tenant": "t", "scopes": ["root"]}]},
         'keys[0].scopes: unknown scope "root"'),
        ({"cache": {"backend": "redis"}}, "cache.backend: redis needs"),
        ({"server": {"trusted_proxies": ["not-an-ip"]}}, "server.trusted_proxies[0]: expected"),
        ({"server": {"stream_drain_share": 1.5}}, "server.stream_drain_share: must be more"),
        ({"server": {"stream_drain_share": 0}}, "server.stream_drain_share: must be more"),
        ({"server": {"drain_idle_s": -1}}, "server.drain_idle_s: must be at least 0"),
        ({"server": {"unknown_key_cache_s": "long"}},
         'server.unknown_key_cache_s: expected a number, got "long"'),
        ({"server": {"key_lookup_timeout_s": -0.5}},
         "server.key_lookup_timeout_s: must be at least 0"),
        ({"limits": {"key_lookups_per_ip": ["often"]}}, "limits.key_lookups_per_ip[0]:"),
        ({"server": {"refusal_logs_per_minute": 0}},
         "server.refusal_logs_per_minute: must be at least 1"),
        ({"server": {"shutdown_timeout_s": float("nan")}},
         "server.shutdown_timeout_s: expected a finite number"),
        ({"backends": {"g": {"type": "openai", "timeout_s": float("inf")}}},
         "backends.g.timeout_s: expected a finite number"),
    ],
)  # fmt: skip
def test_wrong_value_is_refused_naming_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, env={}, source="t")
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_tollway_env_overrides_file_values() -> None:
    config = parse_config(
        {"server": {"port": 1}},
        env={"TOLLWAY_PORT": "9999", "TOLLWAY_REDIS_URL": "redis://r:6379/1"},
        source="t",
    )
    assert config.server.port == 9999
    assert config.redis == "redis://r:6379/1"


def test_config_objects_are_frozen() -> None:
    config = make_config()
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


def test_no_file_gives_embedded_default_with_a_demo_key() -> None:
    config = load_config(None, env={})
    assert config.demo_key is not None and config.demo_key.startswith("tw_")
    assert config.keys[0].id == "demo"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_refuses_a_wrong_file_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  groq: {type: openai, timeout_s: fast}\n")
    result = run_cli("check-config", path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        'tollway: backends.groq.timeout_s: expected a number, got "fast"'
    ]


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    result = run_cli("check-config", write(tmp_path, "server: {port: 8081}\n"))
    assert result.returncode == 0, result.stderr


def test_serve_refuses_a_wrong_file(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", write(tmp_path, "server: {port: -1}\n"))
    assert result.returncode != 0
    assert "server.port: must be at least 0" in result.stderr


def test_keys_new_prints_a_key_and_its_hash() -> None:
    result = run_cli("keys", "new")
    lines = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    key, key_hash = lines["key"].strip(), lines["hash"].strip()
    assert len(key) >= 40
    assert run_cli("keys", "hash", key).stdout.strip() == key_hash


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"type": "openai", "max_response_bytes": 0}, "backends.b.max_response_bytes: must be"),
        ({"type": "tavily", "max_response_bytes": "big"},
         "backends.b.max_response_bytes: expected a whole number"),
    ],
)  # fmt: skip
def test_a_wrong_max_response_bytes_is_refused_naming_the_key(
    backend: dict[str, object], message: str
) -> None:
    from gateway.app import check_config

    with pytest.raises(ConfigError) as raised:  # a key every backend has, read with the rest
        check_config(parse_config({"backends": {"b": backend}}, env={}, source="t"))
    assert str(raised.value).startswith(message)
