"""What `tollway serve` tells the person who started it: where Tollway listens, on the
embedded default (no config file) the demo key it made for this run, and where the admin
console is when it is served."""

from __future__ import annotations

from gateway import __version__
from gateway.config import Config

__all__ = ["announce"]


def announce(config: Config, host: str, port: int) -> None:
    print(f"Tollway {__version__} listening on http://{host}:{port}", flush=True)
    if config.demo_key:
        print(
            "No config given: serving the embedded default.\n"
            f"Demo key (shown once; it changes at every start): {config.demo_key}",
            flush=True,
        )
    if config.server.console:
        where = "sign in with the demo key" if config.demo_key else "sign in with an admin key"
        print(f"Admin console: http://{host}:{port}/console/ ({where})", flush=True)
