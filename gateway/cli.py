"""The ``tollway`` command: serve, check-config, keys."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tollway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config (default: $TOLLWAY_CONFIG or embedded)")
    serve.add_argument("--workers", type=int, help="processes on the port (server.workers)")

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")

    keys = commands.add_parser("keys", help="make and hash API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    key_commands.add_parser("new", help="print a fresh key and its sha256 hash")
    hash_ = key_commands.add_parser("hash", help="print the sha256 hash of KEY for the config")
    hash_.add_argument("key")
    from gateway.state.keys_cli import add_commands

    add_commands(key_commands)
    secrets = commands.add_parser("secrets", help="encrypt values for the config")
    secret_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    secret_commands.add_parser(
        "encrypt", help="read a value on stdin, print it as a Fernet token (TOLLWAY_SECRET_KEY)"
    )
    rotate = secret_commands.add_parser(
        "rotate", help="print CONFIG with every encrypted value re-encrypted under the first key"
    )
    rotate.add_argument("config")
    from gateway.state.cli import add_commands as add_state_commands

    add_state_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.config, args.workers)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "keys":
        return _keys(args)
    if args.command == "secrets":
        return (
            _rotate_secrets(args.config) if args.secrets_command == "rotate" else _encrypt_secret()
        )
    if args.command == "state":
        from gateway.config import ConfigError, load_config
        from gateway.state.cli import run as run_state

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return _fail(str(exc))
        return run_state(config.state, args)
    return 2  # pragma: no cover - argparse refuses unknown commands


def _fail(message: str) -> int:
    print(f"tollway: {message}", file=sys.stderr)
    return 2


def _check_config(path: str) -> int:
    from gateway.app import check_config
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(path)
        check_config(config)
    except ConfigError as exc:
        return _fail(str(exc))
    print(
        f"{path}: ok ({len(config.backends)} backends, {len(config.models)} models, "
        f"{len(config.datasets)} datasets, {len(config.keys)} keys)"
    )
    return 0


def _serve(path: str | None, workers: int | None = None) -> int:
    import logging
    import os

    from gateway.app import check_config
    from gateway.config import ConfigError, load_config
    from gateway.embedded import announce
    from gateway.ops.logs import configure_logging
    from gateway.ops.workers import WORKER_INDEX_ENV, run_workers
    from gateway.serve import run

    if workers is not None:
        if workers < 1:
            return _fail("--workers must be at least 1")
        os.environ["TOLLWAY_WORKERS"] = str(workers)
    try:
        config = load_config(path)
        check_config(config)
    except ConfigError as exc:
        return _fail(str(exc))
    worker_index = os.environ.get(WORKER_INDEX_ENV)
    if config.server.workers > 1 and worker_index is None:
        return run_workers(path, config.server.workers, config.demo_key)
    configure_logging(config.server.log_level)
    first = worker_index in (None, "0")

    def on_ready(addresses: list[object]) -> None:
        if first:
            host, port = addresses[0][:2]  # type: ignore[index]
            announce(config, host, port)

    run(config, on_ready=on_ready)
    # Drained, usage flushed, pools closed: exit now. Tearing down the interpreter's heap
    # adds nothing a later start needs, and on a busy machine it can take longer than the
    # drain itself, past what an orchestrator's grace period allows.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _rotate_secrets(path: str) -> int:
    import os

    from gateway.state.cli import rotate_secrets

    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115
        print(rotate_secrets(text, os.environ.get("TOLLWAY_SECRET_KEY", "")), end="")
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a token no key decrypts
        return _fail(f"a value does not decrypt with TOLLWAY_SECRET_KEY ({type(exc).__name__})")
    return 0


def _encrypt_secret() -> int:
    from backends.secrets import encrypt

    value = sys.stdin.read().rstrip("\n")
    if not value:
        return _fail("nothing to encrypt: give the value on stdin")
    try:
        print(encrypt(value))
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def _keys(args: argparse.Namespace) -> int:
    from gateway.config.keyhash import hash_key, new_key

    if args.keys_command in ("create", "list", "revoke", "rotate"):
        from gateway.config import ConfigError, load_config
        from gateway.state.keys_cli import run

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return _fail(str(exc))
        return run(config, args)
    if args.keys_command == "new":
        key = new_key()
        print(f"key:  {key}\nhash: {hash_key(key)}")
        return 0
    print(hash_key(args.key))
    return 0
