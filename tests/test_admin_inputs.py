"""Admin input is refused unless it is exactly what the field takes: times between 2000
and 2200, no control characters in names, numbers parsed strictly; a revoke is
idempotent; the state store's failures are short answers, never the driver's text."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import ADMIN_KEY, make_config

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def admin(aiohttp_client: Any, tmp_path: Path) -> TestClient:
    config = make_config(
        {"state": f"sqlite:///{tmp_path / 's.db'}", "state_spill_dir": str(tmp_path / "spill")}
    )
    client: TestClient = await aiohttp_client(create_app(config))
    return client


async def keys_count(admin: TestClient) -> int:
    return len((await (await admin.get("/admin/keys", headers=ADMIN)).json())["data"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_at", 2**70),
        ("expires_at", 10**400),
        ("expires_at", 1e300),
        ("expires_at", "9999-01-01T00:00:00Z"),
        ("expires_at", "2250-01-01"),
        ("expires_at", -1),
        ("expires_at", "nan"),
        ("expires_at", "1e12"),
        ("tenant", "acme\x00evil"),
        ("tenant", "acme\nINFO forged log line"),
        ("tenant", "acme\u202egnp.exe"),
        ("name", "key\x00"),
        ("name", "\x1b[31mred"),
        ("models", ["gpt-4o-mini", "m\x00"]),
        ("datasets", ["orders\r\n"]),
    ],
)
async def test_a_key_with_an_insane_value_is_refused_and_nothing_is_stored(
    admin: TestClient, field: str, value: Any
) -> None:
    before = await keys_count(admin)
    body = {"tenant": "acme", "scopes": ["llm"], field: value}
    response = await admin.post(
        "/admin/keys", data=json.dumps(body), headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert error["param"] == field or field == "expires_at" and error["param"] is None
    assert await keys_count(admin) == before


async def test_a_sane_expiry_and_name_are_kept(admin: TestClient) -> None:
    soon = time.time() + 3600
    for expires in (soon, "2199-12-31T23:59:59Z"):
        response = await admin.post(
            "/admin/keys",
            json={"tenant": "acme", "scopes": ["llm"], "expires_at": expires, "name": "café 🚀"},
            headers=ADMIN,
        )
        assert response.status == 201, await response.text()
        assert (await response.json())["name"] == "café 🚀"


async def test_a_change_with_control_characters_is_refused(admin: TestClient) -> None:
    made = await (
        await admin.post("/admin/keys", json={"tenant": "a", "scopes": ["llm"]}, headers=ADMIN)
    ).json()
    response = await admin.patch(
        f"/admin/keys/{made['id']}", json={"name": "x\x00y"}, headers=ADMIN
    )
    assert response.status == 400
    key = await (await admin.get(f"/admin/keys/{made['id']}", headers=ADMIN)).json()
    assert key["name"] is None


@pytest.mark.parametrize(
    "query",
    [
        "/admin/audit?to=nan", "/admin/audit?from=inf", "/admin/audit?to=-inf",
        "/admin/audit?from=1e3", "/admin/audit?to=%201700000000", "/admin/audit?from=0",
        "/admin/audit?to=99999999999", "/admin/audit?from=1999-12-31",
        "/admin/audit?limit=1e3", "/admin/audit?limit=0", "/admin/audit?limit=5000",
        "/admin/audit?limit=-1", "/admin/audit?limit=ten", "/admin/audit?limit=1.5",
        "/admin/audit?key_id=a%00b", "/admin/audit?action=key.create%0a",
        "/admin/usage?from=nan", "/admin/usage?to=1_800_000_000", "/admin/usage?tenant=a%00",
        "/admin/keys?tenant=x%0d%0ay", "/admin/keys/a%00b", "/admin/keys/a%0ab/revoke",
    ],
)  # fmt: skip
async def test_query_and_path_parameters_are_parsed_strictly(admin: TestClient, query: str) -> None:
    method = "POST" if query.endswith("/revoke") else "GET"
    response = await admin.request(method, query, headers=ADMIN)
    assert response.status == 400, (query, await response.text())
    assert (await response.json())["error"]["param"]


async def test_sane_query_parameters_still_answer(admin: TestClient) -> None:
    for query in (
        "/admin/audit?from=2024-01-01&to=2199-01-01T00:00:00Z&limit=1000",
        "/admin/audit?from=1700000000&to=1800000000.5&limit=1",
        "/admin/usage?from=2020-01-01&group_by=tenant,day",
    ):
        assert (await admin.get(query, headers=ADMIN)).status == 200, query


async def test_revoking_twice_keeps_the_first_revocation(admin: TestClient) -> None:
    made = await (
        await admin.post("/admin/keys", json={"tenant": "a", "scopes": ["llm"]}, headers=ADMIN)
    ).json()
    for key_id in (made["id"], "app-1"):  # a stored key, then a key from the config file
        first = await (await admin.post(f"/admin/keys/{key_id}/revoke", headers=ADMIN)).json()
        await asyncio.sleep(0.01)
        second = await (await admin.post(f"/admin/keys/{key_id}/revoke", headers=ADMIN)).json()
        assert first["revoked"] is second["revoked"] is True
        assert second["revoked_at"] == first["revoked_at"], key_id
        audit = await (
            await admin.get(f"/admin/audit?action=key.revoke&key_id={key_id}", headers=ADMIN)
        ).json()
        assert len(audit["data"]) == 1, key_id


async def test_a_state_store_that_fails_is_a_short_503_without_the_driver_text(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    unreachable = tmp_path / "missing-folder" / "s.db"  # SQLite cannot open it
    config = make_config(
        {"state": f"sqlite:///{unreachable}", "state_spill_dir": str(tmp_path / "spill")}
    )
    admin: TestClient = await aiohttp_client(create_app(config))
    for method, path, body in (
        ("POST", "/admin/keys", {"tenant": "a", "scopes": ["llm"]}),
        ("GET", "/admin/keys", None),
        ("GET", "/admin/usage", None),
    ):
        response = await admin.request(method, path, json=body, headers=ADMIN)
        assert response.status == 503, path
        text = await response.text()
        error = json.loads(text)["error"]
        assert error["code"] == "state_store_unavailable"
        assert "sqlite" not in text.lower() and "OperationalError" not in text
        assert response.headers["Retry-After"] == "1"
