"""Keys, usage and audit through the admin API, on SQLite and the real Postgres."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config.keyhash import hash_key
from gateway.state.service import state_service_key
from tests.conftest import ADMIN_KEY, USER_KEY, base_config_data, make_config
from tests.fake_providers import UPSTREAM_KEY, FakeProvider
from tests.services import REDIS_URL

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
Start = Callable[..., Awaitable[TestClient]]


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: Any, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def start(aiohttp_client: Any, fake: FakeProvider, tmp_path: Path) -> Start:
    async def build(state: str, **extra: Any) -> TestClient:
        data = {
            "state": state,
            "state_spill_dir": str(tmp_path / "spill"),
            "backends": {"openai": {"type": "openai", "base_url": f"{fake.url}/v1",  # type: ignore[attr-defined]
                                    "api_key": UPSTREAM_KEY, "retries": 0}},
            "models": {"gpt-4o-mini": {"backend": "openai"}},
            **extra,
        }  # fmt: skip
        client: TestClient = await aiohttp_client(create_app(make_config(data)))
        return client

    return build


async def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/admin/keys", json={"tenant": "acme", "scopes": ["llm"], **body}, headers=ADMIN
    )
    assert response.status == 201, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def models_status(client: TestClient, key: str) -> int:
    return (await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})).status


async def test_key_lifecycle_over_http(start: Start, state_url: str) -> None:
    client = await start(state_url)
    made = await create(client, name="ci", models=["gpt-4o-mini"])
    secret, key_id = made["key"], made["id"]
    assert secret.startswith("tw_") and "hash" not in made and "digest" not in made
    assert await models_status(client, secret) == 200
    listed = await (await client.get("/admin/keys?tenant=acme", headers=ADMIN)).json()
    ids = {k["id"]: k for k in listed["data"]}
    assert key_id in ids and "app-1" in ids and ids["app-1"]["source"] == "config"
    assert secret not in str(listed) and "sha256" not in str(listed)
    patched = await client.patch(f"/admin/keys/{key_id}", json={"scopes": ["query"]}, headers=ADMIN)
    assert patched.status == 200 and (await patched.json())["scopes"] == ["query"]
    assert await models_status(client, secret) == 403
    await client.patch(f"/admin/keys/{key_id}", json={"scopes": ["llm"]}, headers=ADMIN)
    rotated = await client.post(f"/admin/keys/{key_id}/rotate", json={"grace_s": 1}, headers=ADMIN)
    new_secret = (await rotated.json())["key"]
    assert rotated.status == 201 and new_secret != secret
    assert await models_status(client, secret) == 200  # in its grace
    assert await models_status(client, new_secret) == 200
    await asyncio.sleep(1.1)
    assert await models_status(client, secret) == 401
    revoked = await client.post(f"/admin/keys/{key_id}/revoke", headers=ADMIN)
    assert revoked.status == 200 and (await revoked.json())["revoked"] is True
    response = await client.get("/v1/models", headers={"Authorization": f"Bearer {new_secret}"})
    assert response.status == 401 and "revoked" in (await response.json())["error"]["message"]


async def test_config_keys_can_be_revoked_and_not_edited(start: Start, tmp_path: Path) -> None:
    client = await start(f"sqlite:///{tmp_path / 's.db'}")
    assert (
        await client.patch("/admin/keys/app-1", json={"name": "x"}, headers=ADMIN)
    ).status == 409
    assert (await client.post("/admin/keys/app-1/revoke", headers=ADMIN)).status == 200
    assert await models_status(client, USER_KEY) == 401


async def test_expiry(start: Start, tmp_path: Path) -> None:
    client = await start(f"sqlite:///{tmp_path / 's.db'}")
    made = await create(client, expires_at=time.time() + 0.6)
    assert await models_status(client, made["key"]) == 200
    await asyncio.sleep(0.7)
    response = await client.get("/v1/models", headers={"Authorization": f"Bearer {made['key']}"})
    assert response.status == 401 and "expired" in (await response.json())["error"]["message"]


async def test_admin_routes_need_the_admin_scope(start: Start, tmp_path: Path) -> None:
    client = await start(f"sqlite:///{tmp_path / 's.db'}")
    user = {"Authorization": f"Bearer {USER_KEY}"}
    routes = (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/usage"),
        ("GET", "/admin/audit"),
        ("POST", "/admin/keys/app-1/revoke"),
    )
    for method, path in routes:
        response = await client.request(method, path, json={}, headers=user)
        assert response.status == 403, path


async def test_bad_admin_input_is_4xx_and_stores_nothing(start: Start, tmp_path: Path) -> None:
    client = await start(f"sqlite:///{tmp_path / 's.db'}")
    before = len((await (await client.get("/admin/keys", headers=ADMIN)).json())["data"])
    bad = [
        {"scopes": ["llm"]},
        {"tenant": "acme"},
        {"tenant": "acme", "scopes": ["root"]},
        {"tenant": "acme", "scopes": ["llm"], "limits": ["many/minute"]},
        {"tenant": "acme", "scopes": ["llm"], "budget": {"tokens": "lots"}},
        {"tenant": "acme", "scopes": ["llm"], "expires_at": "yesterday"},
        {"tenant": "acme", "scopes": ["llm"], "expires_at": 1},
        {"tenant": "acme", "scopes": ["llm"], "id": "chosen"},
        {"tenant": "", "scopes": ["llm"]},
    ]
    for body in bad:
        response = await client.post("/admin/keys", json=body, headers=ADMIN)
        assert 400 <= response.status < 500, body
        assert "error" in await response.json()
    assert (await client.post("/admin/keys/nope/rotate", json={}, headers=ADMIN)).status == 404
    made = await create(client)
    response = await client.post(
        f"/admin/keys/{made['id']}/rotate", json={"grace_s": -1}, headers=ADMIN
    )
    assert response.status == 400
    after = len((await (await client.get("/admin/keys", headers=ADMIN)).json())["data"])
    assert after == before + 1


async def test_a_revoke_reaches_another_replica_within_a_second(
    start: Start, tmp_path: Path
) -> None:
    state = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = await start(state), await start(state)
    made = await create(one)
    deadline = time.monotonic() + 1.0
    while await models_status(two, made["key"]) != 200:
        assert time.monotonic() < deadline, "the new key never reached the other replica"
        await asyncio.sleep(0.05)
    await one.post(f"/admin/keys/{made['id']}/revoke", headers=ADMIN)
    revoked_at = time.monotonic()
    while await models_status(two, made["key"]) != 401:
        assert time.monotonic() - revoked_at < 1.0, "the revoke took longer than a second"
        await asyncio.sleep(0.05)


async def test_usage_matches_what_the_provider_reported(
    start: Start, state_url: str, fake: FakeProvider
) -> None:
    client = await start(state_url)
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=USER_KEY, max_retries=0)
    messages = [{"role": "user", "content": "count me"}]
    for _ in range(20):
        await api.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    for _ in range(10):
        stream = await api.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )  # type: ignore[arg-type]
        async for _chunk in stream:
            pass
    app = client.server.app
    assert app is not None
    await app[state_service_key].usage.flush()
    answer = await (await client.get("/admin/usage?group_by=key,model", headers=ADMIN)).json()
    row = next(r for r in answer["data"] if r["key"] == "app-1")
    assert row["model"] == "gpt-4o-mini"
    assert row["requests"] == 30 and row["errors"] == 0
    assert row["tokens_in"] == 20 * 5 + 10 * 4
    assert row["tokens_out"] == 20 * 7 + 10 * 3


async def test_audit_records_admin_actions_and_refused_keys(
    start: Start, tmp_path: Path, log_lines: Any
) -> None:
    client = await start(f"sqlite:///{tmp_path / 's.db'}")
    made = await create(client)
    await client.post(f"/admin/keys/{made['id']}/revoke", headers=ADMIN)
    assert await models_status(client, made["key"]) == 401
    assert await models_status(client, "tw_never-issued-0123456789abcdefghij") == 401
    assert (
        await client.get("/v1/datasets", headers={"Authorization": f"Bearer {made['key']}"})
    ).status == 401
    entries = (await (await client.get("/admin/audit", headers=ADMIN)).json())["data"]
    actions = [(e["action"], e["key_id"]) for e in entries]
    assert ("key.create", made["id"]) in actions and ("key.revoke", made["id"]) in actions
    assert ("auth.revoked", made["id"]) in actions and ("auth.unknown", None) in actions
    assert all(e["actor"] == "admin" for e in entries if e["action"].startswith("key."))
    everything = str(entries) + "\n".join(log_lines())
    assert made["key"] not in everything and ADMIN_KEY not in everything
    assert "sha256:" not in everything


async def test_the_store_stopped_mid_run_loses_no_usage(
    start: Start, throwaway_cluster: Any, tmp_path: Path
) -> None:
    client = await start(throwaway_cluster.dsn)
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    app = client.server.app
    assert app is not None
    service = app[state_service_key]
    for _ in range(5):
        assert (await client.post("/v1/chat/completions", json=body, headers=headers)).status == 200
    await service.usage.flush()
    await asyncio.to_thread(throwaway_cluster.stop)
    for _ in range(15):
        assert (await client.post("/v1/chat/completions", json=body, headers=headers)).status == 200
    assert await service.usage.flush() is False  # the store is away: records wait
    scrape = await (await client.get("/metrics")).text()
    assert 'tollway_state_store_errors_total{operation="write_usage"}' in scrape
    await asyncio.to_thread(throwaway_cluster.start)
    for _ in range(50):
        if await service.usage.flush():
            break
        await asyncio.sleep(0.1)
    rows = await service.store.fetch(
        "SELECT count(*), sum(tokens_in) FROM tollway_usage WHERE key_id = ?", ("app-1",)
    )
    assert rows[0][0] == 20 and rows[0][1] == 20 * 5


@pytest.mark.parametrize("shared", [False, True])
async def test_token_budget_refuses_once_spent(
    start: Start, tmp_path: Path, shared: bool, redis_prefix: str
) -> None:
    budget_key = "tw_budgeted-0123456789abcdefghijkl"
    keys = [
        {"id": "budgeted", "hash": hash_key(budget_key), "tenant": "acme", "scopes": ["llm"],
         "budget": {"tokens": ["20/day"]}}
    ]  # fmt: skip
    extra: dict[str, Any] = {"keys": keys + base_config_data()["keys"]}
    if shared:
        extra |= {"redis": REDIS_URL, "redis_prefix": redis_prefix}
    one = await start(f"sqlite:///{tmp_path / 's.db'}", **extra)
    two = await start(f"sqlite:///{tmp_path / 's.db'}", **extra) if shared else one
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Authorization": f"Bearer {budget_key}"}
    assert (await one.post("/v1/chat/completions", json=body, headers=headers)).status == 200
    assert (await two.post("/v1/chat/completions", json=body, headers=headers)).status == 200
    refused = await one.post("/v1/chat/completions", json=body, headers=headers)
    assert refused.status == 429
    assert (await refused.json())["error"]["code"] == "budget_exceeded"
    assert int(refused.headers["Retry-After"]) > 3600
    other = {"Authorization": f"Bearer {USER_KEY}"}
    assert (await one.post("/v1/chat/completions", json=body, headers=other)).status == 200


def _cli(config: Path, *args: str) -> dict[str, Any]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = orjson.loads(done.stdout)
    return answer


async def test_cli_key_lifecycle_reaches_a_running_gateway(start: Start, tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'cli.db'}"
    config = tmp_path / "tollway.yaml"
    config.write_text(f"state: {state}\nkeys: []\n")
    client = await start(state)
    made = await asyncio.to_thread(_cli, config, "create", "--tenant", "acme", "--scopes", "llm")
    listed = await asyncio.to_thread(_cli, config, "list")
    assert [k["id"] for k in listed["data"]] == [made["id"]] and made["key"] not in str(listed)
    deadline = time.monotonic() + 2
    while await models_status(client, made["key"]) != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    rotated = await asyncio.to_thread(_cli, config, "rotate", made["id"])
    await asyncio.to_thread(_cli, config, "revoke", made["id"])
    deadline = time.monotonic() + 2
    while await models_status(client, rotated["key"]) != 401:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    audit = (await (await client.get("/admin/audit?key_id=" + made["id"], headers=ADMIN)).json())[
        "data"
    ]
    assert {e["action"] for e in audit} >= {"key.create", "key.rotate", "key.revoke"}
    assert {e["actor"] for e in audit if e["action"].startswith("key.")} == {"cli"}


async def test_sigterm_with_streams_in_flight_keeps_every_usage_record(
    fake: FakeProvider, tmp_path: Path, unused_tcp_port: int
) -> None:
    import signal

    from gateway.serve import serve

    state = tmp_path / "state.db"
    config = make_config(
        {
            "server": {"port": unused_tcp_port, "shutdown_timeout_s": 10},
            "state": f"sqlite:///{state}",
            "state_spill_dir": str(tmp_path / "spill"),
            "backends": {"openai": {"type": "openai", "base_url": f"{fake.url}/v1",  # type: ignore[attr-defined]
                                    "api_key": UPSTREAM_KEY}},
            "models": {"gpt-4o-mini": {"backend": "openai"}},
        }
    )  # fmt: skip
    fake.stream_gap_s = 0.2  # each stream takes about a second
    ready = asyncio.Event()
    server = asyncio.ensure_future(serve(config, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    api = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", api_key=USER_KEY, max_retries=0
    )

    async def one_stream() -> str:
        stream = await api.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
        )
        text = ""
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
        return text

    streams = [asyncio.ensure_future(one_stream()) for _ in range(20)]
    while fake.hits("chat") < 20:  # noqa: ASYNC110 - waiting on another server
        await asyncio.sleep(0.02)
    os.kill(os.getpid(), signal.SIGTERM)
    texts = await asyncio.gather(*streams)
    await asyncio.wait_for(server, 20)
    assert texts == ["Hello there"] * 20  # the drain let every stream finish
    import sqlite3

    with sqlite3.connect(state) as connection:
        count, tokens_out = connection.execute(
            "SELECT count(*), sum(tokens_out) FROM tollway_usage WHERE route_class = 'chat'"
        ).fetchone()
    assert count == 20 and tokens_out == 20 * 3
