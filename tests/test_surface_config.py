"""Configuring the wider OpenAI surface: which APIs a backend and a model serve, the audio
limit and the stored-response expiry, what may be cached; and the embedded default,
which serves the providers whose keys are in the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import APIS, ConfigError, load_config
from gateway.config.defaults import embedded_config_data
from gateway.embedded import banner
from tests.conftest import ADMIN_KEY, make_config
from tests.fake_providers import FakeProvider
from tests.llm_support import Tollway, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture
from tests.services import free_port


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"backends": {"o": {"type": "openai", "apis": ["chat", "video"]}}},
         'backends.o.apis[1]: unknown API "video"'),
        ({"backends": {"t": {"type": "tavily", "apis": ["chat"]}}},
         "backends.t.apis: only LLM backends"),
        ({"backends": {"o": {"type": "openai", "apis": ["chat"]}},
          "models": {"m": {"backend": "o", "apis": ["images"]}}},
         'models.m.apis: backend "o" does not serve images'),
        ({"server": {"audio_max_bytes": 0}}, "server.audio_max_bytes: must be at least 1"),
        ({"server": {"responses_ttl_s": "long"}}, "server.responses_ttl_s: expected a number"),
        ({"cache": {"routes": ["images"]}}, 'cache.routes[0]: "images" answers are never cached'),
        ({"limits": {"routes": {"video": ["1/minute"]}}}, "limits.routes.video: unknown route"),
    ],
)  # fmt: skip
def test_a_wrong_setting_names_its_key(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(extra)
    assert str(raised.value).startswith(message), str(raised.value)


def test_a_backend_that_does_not_say_serves_what_its_provider_serves() -> None:
    config = make_config(
        {
            "backends": {
                "openai": {"type": "openai"},
                "groq": {"type": "openai", "base_url": "https://api.groq.com/openai/v1"},
                "vllm": {"type": "openai", "base_url": "http://10.0.0.5:8000/v1"},
                "narrow": {"type": "openai", "base_url": "http://x/v1", "apis": ["audio"]},
            }
        }
    )
    apis = {name: set(b.apis) for name, b in config.backends.items()}
    assert apis == {
        "openai": set(APIS),
        "groq": {"chat", "responses", "audio"},
        "vllm": set(APIS),
        "narrow": {"audio"},
    }


def test_the_new_limits_have_their_defaults_and_may_be_cached_where_safe() -> None:
    config = make_config({"cache": {"routes": ["moderations", "responses", "completions"]}})
    assert config.server.audio_max_bytes == 25 * 1024 * 1024
    assert config.server.responses_ttl_s == 30 * 86400
    assert config.cache.routes == {"moderations", "responses", "completions"}


def test_the_embedded_default_serves_the_providers_whose_keys_are_set() -> None:
    env = {"OPENAI_API_KEY": "sk-test", "TAVILY_API_KEY": "tvly-test"}
    config = load_config(None, env=env)
    assert set(config.backends) == {"demo", "openai", "tavily"}
    assert config.backends["openai"].options["api_key"] == "sk-test"
    assert config.models["gpt-4o-mini"].backend == "openai"
    assert config.models["whisper-1"].apis == {"audio"}
    assert "llama-3.1-8b-instant" not in config.models
    assert config.providers == (
        ("openai", "OPENAI_API_KEY", True),
        ("groq", "GROQ_API_KEY", False),
        ("tavily", "TAVILY_API_KEY", True),
    )
    assert config.unconfigured == {}  # OpenAI serves every API


def test_the_embedded_default_built_from_the_mapping_it_is_given() -> None:
    groq_only = embedded_config_data({"GROQ_API_KEY": "gsk-test"})
    assert set(groq_only.data["backends"]) == {"demo", "groq"}
    assert groq_only.data["models"]["openai/gpt-oss-20b"]["backend"] == "groq"
    assert "OPENAI_API_KEY" in groq_only.unconfigured["images"]
    assert "chat" not in groq_only.unconfigured
    nothing = embedded_config_data({})
    assert "OPENAI_API_KEY or GROQ_API_KEY" in nothing.unconfigured["chat"]
    assert "TAVILY_API_KEY" in nothing.unconfigured["search"]


def test_the_start_banner_says_which_providers_it_found() -> None:
    config = load_config(None, env={"GROQ_API_KEY": "gsk-test"})
    text = banner(config, "127.0.0.1", 8080)
    assert "Providers found: groq (GROQ_API_KEY)" in text
    assert "Not set (those providers are off): OPENAI_API_KEY, TAVILY_API_KEY" in text
    assert "Providers found: none" in banner(load_config(None, env={}), "127.0.0.1", 8080)


async def test_with_no_keys_the_llm_routes_answer_an_error_naming_the_variable_to_set(
    aiohttp_client: Any,
) -> None:
    config = load_config(None, env={"TOLLWAY_STATE_URL": "sqlite:///:memory:"})
    client = await aiohttp_client(create_app(config))
    auth = {"Authorization": f"Bearer {config.demo_key}"}
    for path, body in (
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user"}]}),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "x"}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}),
        ("/v1/images/generations", {"prompt": "x"}),
        ("/v1/search", {"query": "x"}),
    ):  # fmt: skip
        answer = await client.post(path, json=body, headers=auth)
        assert answer.status == 503, path
        assert answer.headers["x-should-retry"] == "false"
        message = (await answer.json())["error"]["message"]
        assert ("TAVILY_API_KEY" if path == "/v1/search" else "OPENAI_API_KEY") in message, path


async def test_with_a_key_the_usual_models_are_routed_by_name_and_as_backend_model(
    aiohttp_client: Any,
) -> None:
    env = {"OPENAI_API_KEY": "sk-test", "TOLLWAY_STATE_URL": "sqlite:///:memory:"}
    config = load_config(None, env=env)
    client = await aiohttp_client(create_app(config))
    auth = {"Authorization": f"Bearer {config.demo_key}"}
    listed = {
        m["id"] for m in (await (await client.get("/v1/models", headers=auth)).json())["data"]
    }
    assert {"gpt-4o-mini", "gpt-4.1", "whisper-1", "gpt-image-1", "tts-1"} <= listed
    one = await client.get("/v1/models/openai/gpt-4.1-mini", headers=auth)
    assert (await one.json())["owned_by"] == "openai"


def test_serve_without_config_prints_the_providers_it_found(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env.update({"TOLLWAY_PORT": str(port), "OPENAI_API_KEY": "sk-test", "PYTHONPATH": os.getcwd()})
    env.pop("GROQ_API_KEY", None)
    env.pop("TAVILY_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith("Providers found") or not line:
                break
        assert "Providers found: openai (OPENAI_API_KEY)\n" in lines, lines
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)


async def test_admin_usage_sums_the_new_figures(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway({"models": {"whisper": {"backend": "openai"}}})
    await sdk(client).responses.create(model="solo", input="x")
    await sdk(client).audio.transcriptions.create(file=("a.wav", b"RIFF" * 100), model="whisper")
    from gateway.state.service import state_service_key

    await client.app[state_service_key].usage.flush()
    answer = await client.get(
        "/admin/usage?group_by=route", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    rows = {row["route"]: row for row in (await answer.json())["data"]}
    assert rows["responses"]["tokens_cached"] == 4
    assert rows["responses"]["tokens_reasoning"] == 3
    assert rows["audio"]["audio_seconds"] == 42
