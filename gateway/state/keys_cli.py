"""``tollway keys create|list|revoke|rotate``: the admin API's key lifecycle, run against
the configured state store directly (same validation, same audit trail, actor ``cli``).
Replicas pick the change up within a second, as they do for the API."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from typing import Any

import orjson

from gateway.config import Config
from gateway.config.keyhash import key_digest, new_key
from gateway.errors import TollwayError
from gateway.state.key_changes import MAX_GRACE_S, apply_changes, public_stored
from gateway.state.service import AUDIT_COLUMNS
from gateway.state.store import KeyQueries, StoredKey, StoreUnavailable, open_store

__all__ = ["add_commands", "run"]


def add_commands(key_commands: Any) -> None:
    create = key_commands.add_parser("create", help="create a stored key; prints it once")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--scopes", required=True, help="comma-separated: llm,search,query,odata,admin"
    )
    create.add_argument("--models", help="comma-separated models the key may use")
    create.add_argument("--datasets", help="comma-separated datasets the key may read")
    create.add_argument("--limits", help='comma-separated rates, e.g. "120/minute"')
    create.add_argument("--budget", help='comma-separated token budgets, e.g. "1000000/day"')
    create.add_argument("--expires-at", help="unix time or ISO 8601")
    create.add_argument("--name")
    listing = key_commands.add_parser("list", help="list stored keys (never the key)")
    listing.add_argument("--tenant")
    revoke = key_commands.add_parser("revoke", help="revoke a stored or config key")
    revoke.add_argument("id")
    rotate = key_commands.add_parser("rotate", help="a new secret; the old one works for --grace-s")
    rotate.add_argument("id")
    rotate.add_argument("--grace-s", type=float, default=0.0)
    for command in (create, listing, revoke, rotate):
        command.add_argument("--config", help="YAML config (default: $TOLLWAY_CONFIG or embedded)")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


async def _run(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(config.state)
    queries = KeyQueries(store)
    try:
        await store.migrate()
        command = args.keys_command
        if command == "list":
            keys = [public_stored(k) for k in await queries.all()]
            return {"data": [k for k in keys if args.tenant in (None, k["tenant"])]}
        if command == "create":
            body: dict[str, Any] = {"scopes": _split(args.scopes)}
            for name in ("models", "datasets", "limits"):
                if getattr(args, name):
                    body[name] = _split(getattr(args, name))
            if args.budget:
                body["budget"] = {"tokens": _split(args.budget)}
            if args.expires_at:
                body["expires_at"] = (
                    float(args.expires_at)
                    if args.expires_at.replace(".", "").isdigit()
                    else args.expires_at
                )
            if args.name:
                body["name"] = args.name
            secret = new_key()
            key = StoredKey(
                id=f"key_{secrets.token_hex(8)}",
                digest=key_digest(secret),
                tenant=args.tenant,
                scopes=[],
            )
            apply_changes(key, body)
            await queries.save(key, new=True)
            await _audit(store, "key.create", key.id, {"after": public_stored(key)})
            return {**public_stored(key), "key": secret}
        if command == "revoke":
            if any(k.id == args.id for k in config.keys):
                await queries.revoke_config_key(args.id, time.time())
                await _audit(store, "key.revoke", args.id, {"source": "config"})
                return {"id": args.id, "source": "config", "revoked": True}
            key = await _existing(queries, args.id)
            key.revoked_at = key.updated_at = time.time()
            await queries.save(key, new=False)
            await _audit(store, "key.revoke", key.id, {"source": "store"})
            return public_stored(key)
        key = await _existing(queries, args.id)
        if not 0 <= args.grace_s <= MAX_GRACE_S or key.revoked_at is not None:
            raise TollwayError("grace must be 0..30 days and the key not revoked")
        secret = new_key()
        now = time.time()
        key.previous_digest = key.digest if args.grace_s > 0 else None
        key.previous_valid_until = now + args.grace_s if args.grace_s > 0 else None
        key.digest, key.updated_at = key_digest(secret), now
        await queries.save(key, new=False)
        await _audit(store, "key.rotate", key.id, {"grace_s": args.grace_s})
        return {**public_stored(key), "key": secret}
    finally:
        await store.close()


async def _existing(queries: KeyQueries, key_id: str) -> StoredKey:
    key = await queries.get(key_id)
    if key is None:
        raise TollwayError(f"no stored key {key_id!r}")
    return key


async def _audit(store: Any, action: str, key_id: str, detail: dict[str, Any]) -> None:
    await store.execute(
        f"INSERT INTO tollway_audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (time.time(), action, key_id, "cli", None, None, orjson.dumps(detail).decode()),
    )


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(_run(config, args))
    except TollwayError as exc:
        print(f"tollway: {exc.message}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"tollway: the state store is unavailable ({exc})", file=sys.stderr)
        return 1
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0
