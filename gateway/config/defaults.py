"""The embedded default: what `tollway serve` runs when it is given no config file.

Besides the DuckDB demo warehouse it serves every provider whose key is in the
environment (``OPENAI_API_KEY``, ``GROQ_API_KEY``, ``TAVILY_API_KEY``), with that
provider's usual models routed by name (and as ``backend/model``). What it could not
serve is remembered, so those routes can say which variable to set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.config.keyhash import hash_key, new_key
from gateway.config.model import APIS

__all__ = ["PROVIDERS", "EmbeddedDefault", "embedded_config_data"]

_CHAT: Final = ["chat", "responses"]


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    env: str
    backend: dict[str, Any]
    models: dict[str, list[str]]
    """Model name → the APIs it serves."""
    serves: tuple[str, ...] = field(default=())
    """The route kinds besides the LLM APIs (``search``)."""


PROVIDERS: Final = (
    Provider(
        "openai",
        "OPENAI_API_KEY",
        {"type": "openai", "api_key": "${OPENAI_API_KEY}", "apis": list(APIS)},
        {
            **{
                name: _CHAT
                for name in (
                    "gpt-4o-mini",
                    "gpt-4o",
                    "gpt-4.1",
                    "gpt-4.1-mini",
                    "gpt-4.1-nano",
                    "o4-mini",
                    "o3",
                    "o3-mini",
                    "gpt-5",
                    "gpt-5-mini",
                    "gpt-5-nano",
                )
            },  # fmt: skip
            "gpt-3.5-turbo-instruct": ["completions"],
            "text-embedding-3-small": ["embeddings"],
            "text-embedding-3-large": ["embeddings"],
            "omni-moderation-latest": ["moderations"],
            "whisper-1": ["audio"],
            "gpt-4o-transcribe": ["audio"],
            "gpt-4o-mini-transcribe": ["audio"],
            "tts-1": ["audio"],
            "tts-1-hd": ["audio"],
            "gpt-4o-mini-tts": ["audio"],
            "gpt-image-1": ["images"],
            "dall-e-3": ["images"],
        },
    ),
    Provider(
        "groq",
        "GROQ_API_KEY",
        {
            "type": "openai",
            "base_url": "https://api.groq.com/openai/v1",
            "api_key": "${GROQ_API_KEY}",
            "outbound_limit": "30/minute",
            "apis": ["chat", "responses", "audio"],
        },
        {
            "llama-3.1-8b-instant": _CHAT,
            "llama-3.3-70b-versatile": _CHAT,
            "openai/gpt-oss-20b": _CHAT,
            "openai/gpt-oss-120b": _CHAT,
            "whisper-large-v3": ["audio"],
            "whisper-large-v3-turbo": ["audio"],
        },
    ),
    Provider(
        "tavily",
        "TAVILY_API_KEY",
        {
            "type": "tavily",
            "base_url": "https://api.tavily.com",
            "api_key": "${TAVILY_API_KEY}",
            "outbound_limit": "20/minute",
        },
        {},
        serves=("search",),
    ),
)
"""The providers the embedded default knows, in the order it prefers them."""


@dataclass(frozen=True, slots=True)
class EmbeddedDefault:
    data: dict[str, Any]
    """The config, as parsed YAML would be."""
    demo_key: str
    providers: tuple[tuple[str, str, bool], ...]
    """(provider, environment variable, whether it holds a key), for the start banner."""
    unconfigured: dict[str, str]
    """API or route kind → what to set to serve it (only for those no provider serves)."""


def embedded_config_data(env: Mapping[str, str]) -> EmbeddedDefault:
    """The default config for this environment, and the demo key it accepts."""
    # Workers of one `serve --workers N` share the key their parent made.
    demo_key = env.get("TOLLWAY_DEMO_KEY") or new_key()
    # DuckDB runs in a worker process: its allocator grows there, not in the gateway
    # (bench soak: the gateway went from 108 to 130 MB with DuckDB in-process), and the
    # worker is restarted past 512 MB. One DuckDB thread: every thread that runs DuckDB
    # queries keeps allocator caches of its own; the demo tables are small, so one query
    # at a time costs nothing noticeable.
    backends: dict[str, Any] = {
        "demo": {
            "type": "duckdb",
            "demo": True,
            "timeout_s": 30,
            "threads": 1,
            "isolated": True,
            "worker_memory_mb": 512,
        }
    }
    models: dict[str, Any] = {}
    found = []
    for provider in PROVIDERS:
        present = bool(env.get(provider.env, "").strip())
        found.append((provider.name, provider.env, present))
        if not present:
            continue
        backends[provider.name] = dict(provider.backend)
        for model, apis in provider.models.items():
            models.setdefault(model, {"backend": provider.name, "apis": list(apis)})
    data: dict[str, Any] = {
        # The console is on: bound to 127.0.0.1, a newcomer signs in with the demo key.
        "server": {"host": "127.0.0.1", "port": 8080, "console": True},
        "state": "sqlite:///./tollway-state.db",
        "backends": backends,
        "models": models,
        "datasets": {
            "orders": {
                "backend": "demo",
                "table": "orders",
                "tenant_column": "tenant_id",
                "time_dimension": "day",
                "dimensions": {
                    "region": "region",
                    "product": "product",
                    "day": "CAST(ordered_at AS DATE)",
                    "month": "strftime(ordered_at, '%Y-%m')",
                },
                "metrics": {
                    "revenue": "sum(amount)",
                    "orders": "count(*)",
                    "units": "sum(quantity)",
                },
            }
        },
        "keys": [
            {
                "id": "demo",
                "hash": hash_key(demo_key),
                "tenant": "acme",
                "scopes": ["llm", "search", "query", "odata", "admin"],
                "name": "demo key (embedded default)",
            }
        ],
    }
    return EmbeddedDefault(data, demo_key, tuple(found), _unconfigured(backends))


def _unconfigured(backends: Mapping[str, Any]) -> dict[str, str]:
    """For each API (and ``search``) no configured backend serves, the variables to set."""
    served = {api for b in backends.values() for api in b.get("apis", ())}
    served |= {kind for p in PROVIDERS if p.name in backends for kind in p.serves}
    hints = {}
    for need in (*APIS, "search"):
        if need in served:
            continue
        names = [p.env for p in PROVIDERS if need in p.serves or need in p.backend.get("apis", ())]
        hints[need] = (
            f"set {' or '.join(names)} in Tollway's environment and start it again "
            "(no config file: the embedded default serves the providers whose keys it finds)"
        )
    return hints
