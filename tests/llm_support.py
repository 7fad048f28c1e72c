"""What the LLM tests share: the config over the fake providers, the `tollway` fixture
(Tollway on 127.0.0.1 in front of them) and an SDK client for it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import USER_KEY, make_config, merge
from tests.fake_providers import TAVILY_KEY, UPSTREAM_KEY, FakeProvider

__all__ = ["HI", "Tollway", "llm_config", "metrics_text", "sdk", "tollway"]

Tollway = Callable[..., Awaitable[TestClient]]
HI = [{"role": "user", "content": "x"}]


def llm_config(url: str) -> dict[str, Any]:
    common = {
        "api_key": UPSTREAM_KEY,
        "timeout_s": 3,
        "retries": 2,
        "breaker": {"failures": 3, "reset_s": 60},
        "first_token_timeout_s": 1,
        "idle_timeout_s": 0.5,
    }
    return {
        "backends": {
            "openai": {"type": "openai", "base_url": f"{url}/v1", **common},
            "groq": {"type": "openai", "base_url": f"{url}/openai/v1", **common},
            "tavily": {"type": "tavily", "base_url": url, "api_key": TAVILY_KEY},
        },
        "models": {
            "gpt-4o-mini": {"backend": "openai", "fallbacks": ["llama-3.1-8b-instant"]},
            "llama-3.1-8b-instant": {"backend": "groq"},
            "solo": {"backend": "openai", "model": "solo-upstream"},
        },
    }


@pytest.fixture
def tollway(aiohttp_client: Any, fake: FakeProvider) -> Tollway:
    async def start(extra: dict[str, Any] | None = None) -> TestClient:
        data = merge(llm_config(fake.url), extra or {})  # type: ignore[attr-defined]
        client: TestClient = await aiohttp_client(
            create_app(make_config(data)), server_kwargs={"handler_cancellation": True}
        )
        return client

    return start


def sdk(client: TestClient, key: str = USER_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=str(client.make_url("/v1")), api_key=key, max_retries=0, timeout=10
    )


async def metrics_text(client: TestClient) -> str:
    response = await client.get("/metrics")
    return await response.text()
