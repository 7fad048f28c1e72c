"""What `tollway serve` tells the person who started it: where Tollway listens and, on
the embedded default (no config file), the demo key it made for this run, where the admin
console is when it is served, and which providers it found keys for."""

from __future__ import annotations

from gateway import __version__
from gateway.config import Config

__all__ = ["announce", "banner"]


def banner(config: Config, host: str, port: int) -> str:
    lines = [f"Tollway {__version__} listening on http://{host}:{port}"]
    if config.demo_key:
        lines += [
            "No config given: serving the embedded default.",
            f"Demo key (shown once; it changes at every start): {config.demo_key}",
        ]
    if config.server.console:
        where = "sign in with the demo key" if config.demo_key else "sign in with an admin key"
        lines.append(f"Admin console: http://{host}:{port}/console/ ({where})")
    if config.providers:
        found = [f"{name} ({env})" for name, env, present in config.providers if present]
        missing = [env for _name, env, present in config.providers if not present]
        lines.append(f"Providers found: {', '.join(found) if found else 'none'}")
        if missing:
            lines.append(f"Not set (those providers are off): {', '.join(missing)}")
        if found:
            lines.append(f"Try: OpenAI(base_url='http://{host}:{port}/v1', api_key=<the demo key>)")
        else:
            lines.append(
                "The LLM routes answer 503 until a key is set: e.g. OPENAI_API_KEY=sk-... make run"
            )
    return "\n".join(lines)


def announce(config: Config, host: str, port: int) -> None:
    print(banner(config, host, port), flush=True)
