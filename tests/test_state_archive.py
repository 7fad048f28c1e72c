"""Backup, verify and restore of the state store, on SQLite and the real Postgres."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet

from gateway.app import create_app
from gateway.state.archive import ArchiveError, backup, restore, verify
from gateway.state.cli import prune, rotate_secrets
from gateway.state.service import state_service_key
from tests.conftest import ADMIN_KEY, make_config

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
Start = Callable[[str], Awaitable[TestClient]]


@pytest.fixture
def start(aiohttp_client: Any, tmp_path: Path) -> Start:
    async def build(state: str) -> TestClient:
        config = make_config({"state": state, "state_spill_dir": str(tmp_path / "spill")})
        client: TestClient = await aiohttp_client(create_app(config))
        return client

    return build


async def status(client: TestClient, key: str) -> int:
    return (await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})).status


async def populate(client: TestClient) -> dict[str, str]:
    """Keys created, patched, revoked and rotated; requests with usage; audit entries."""
    made = {}
    for name in ("live", "revoked", "rotated"):
        response = await client.post(
            "/admin/keys", json={"tenant": "acme", "scopes": ["llm"], "name": name}, headers=ADMIN
        )
        made[name] = await response.json()
    await client.patch(f"/admin/keys/{made['live']['id']}", json={"name": "patched"}, headers=ADMIN)
    await client.post(f"/admin/keys/{made['revoked']['id']}/revoke", headers=ADMIN)
    rotated = await client.post(
        f"/admin/keys/{made['rotated']['id']}/rotate", json={}, headers=ADMIN
    )
    secrets = {
        "live": made["live"]["key"],
        "revoked": made["revoked"]["key"],
        "rotated": (await rotated.json())["key"],
    }
    for index in range(60):
        await status(client, secrets["live" if index % 2 else "rotated"])
    await status(client, "tw_nobody-0123456789abcdefghijklmn")  # a refused key: audited
    service = client.server.app[state_service_key]  # type: ignore[index]
    await service.usage.flush()
    await service.audit.flush()
    return secrets


async def answers(client: TestClient) -> tuple[Any, Any]:
    usage = await (
        await client.get("/admin/usage?group_by=key,tenant,route,day", headers=ADMIN)
    ).json()
    audit = await (await client.get("/admin/audit?limit=1000", headers=ADMIN)).json()
    return usage, audit


async def check_restored(
    client: TestClient, secrets: dict[str, str], before: tuple[Any, Any]
) -> None:
    assert await status(client, secrets["live"]) == 200
    assert await status(client, secrets["rotated"]) == 200
    assert await status(client, secrets["revoked"]) == 401
    after = await answers(client)
    assert after[0] == before[0]
    assert after[1]["data"][-len(before[1]["data"]) :] == before[1]["data"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_restore_drill(start: Start, tmp_path: Path, kind: str, pg_databases: Any) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}" if kind == "sqlite" else await pg_databases()
    client = await start(state)
    secrets = await populate(client)
    before = await answers(client)
    archive = tmp_path / "backup.twb"
    load = asyncio.ensure_future(
        asyncio.gather(*(status(client, secrets["live"]) for _ in range(40)))
    )
    manifest = await backup(state, archive)  # while requests are still being served
    await load
    assert manifest["tables"]["tollway_keys"]["rows"] == 3
    assert await asyncio.to_thread(verify, archive, None)
    target = f"sqlite:///{tmp_path / 'fresh.db'}" if kind == "sqlite" else await pg_databases()
    await restore(target, archive, None, force=False)
    restored = await start(target)
    await check_restored(restored, secrets, before)


async def test_sqlite_to_postgres(start: Start, tmp_path: Path, pg_databases: Any) -> None:
    sqlite_state = f"sqlite:///{tmp_path / 'embedded.db'}"
    client = await start(sqlite_state)
    secrets = await populate(client)
    before = await answers(client)
    archive = tmp_path / "move.twb"
    await backup(sqlite_state, archive)
    postgres_state = await pg_databases()
    await restore(postgres_state, archive, None, force=False)
    await check_restored(await start(postgres_state), secrets, before)


def _rewrite(archive: Path, target: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    lines = gzip.decompress(archive.read_bytes()).splitlines(keepends=True)
    target.write_bytes(gzip.compress(b"".join(change(lines))))


async def test_damaged_archives_are_refused_and_the_store_is_untouched(
    start: Start, tmp_path: Path
) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    client = await start(state)
    await populate(client)
    key = Fernet.generate_key().decode()
    good, sealed = tmp_path / "good.twb", tmp_path / "sealed.twb"
    await backup(state, good)
    await backup(state, sealed, encrypt_with=key)
    assert verify(sealed, key)["tables"]["tollway_keys"]["rows"] == 3

    flipped = tmp_path / "flipped.twb"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.twb"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    newer = tmp_path / "newer.twb"

    def bump(lines: list[bytes]) -> list[bytes]:
        manifest = orjson.loads(lines[0])
        manifest["schema_version"] = 99
        return [orjson.dumps(manifest) + b"\n", *lines[1:]]

    _rewrite(good, newer, bump)
    altered = tmp_path / "altered.twb"
    _rewrite(
        good,
        altered,
        lambda lines: [lines[0], *[line.replace(b"acme", b"evil") for line in lines[1:]]],
    )
    cases = [
        (flipped, None, "damaged|checksum|not JSON"),
        (truncated, None, "damaged|truncated|ends after"),
        (newer, None, "newer"),
        (altered, None, "checksum"),
        (sealed, Fernet.generate_key().decode(), "does not decrypt"),
        (sealed, None, "encrypted"),
        (tmp_path / "missing.twb", None, "no archive"),
    ]
    target = f"sqlite:///{tmp_path / 'target.db'}"
    target_client = await start(target)
    await populate(target_client)
    reference = await answers(target_client)
    for archive, keys, message in cases:
        with pytest.raises(ArchiveError, match=message):
            await restore(target, archive, keys, force=True)
    assert await answers(target_client) == reference  # nothing was changed
    with pytest.raises(ArchiveError, match="already holds"):
        await restore(target, good, None, force=False)


def test_cli_verify_exit_status_and_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.twb"
    bad.write_bytes(b"not an archive")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "state", "verify", str(bad)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("tollway: ")


def test_retention_keeps_the_newest_and_drops_the_old(tmp_path: Path) -> None:
    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    for days in (0, 3, 8, 30):
        (
            tmp_path / f"tollway-state-{now - dt.timedelta(days=days):%Y%m%dT%H%M%SZ}.twb"
        ).write_bytes(b"x")
    (tmp_path / "unrelated.txt").write_bytes(b"x")
    removed = prune(tmp_path, 7, now)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "tollway-state-20261122T120000Z.twb"
    lonely = tmp_path / "old"
    lonely.mkdir()
    (lonely / "tollway-state-20200101T000000Z.twb").write_bytes(b"x")
    assert prune(lonely, 7, now) == []  # never the newest, however old


def test_secret_key_rotation(tmp_path: Path) -> None:
    from backends.secrets import encrypt, fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = encrypt("postgresql://u:p@db/x", old)
    text = f"# comment kept\nbackends:\n  wh:\n    type: postgres\n    dsn_encrypted: {token}\n"
    rotated = rotate_secrets(text, f"{new},{old}")
    assert rotated.startswith("# comment kept\n") and token not in rotated
    new_token = rotated.split("dsn_encrypted: ")[1].strip()
    assert fernet(new).decrypt(new_token.encode()) == b"postgresql://u:p@db/x"
    assert fernet(f"{new},{old}").decrypt(token.encode())  # during rotation both work
