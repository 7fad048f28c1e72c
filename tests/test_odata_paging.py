"""Server-driven paging with signed keyset `$skiptoken`s, `Prefer: odata.maxpagesize`, and
OData pages through the tenant-scoped response cache."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import OTHER_TENANT_KEY, USER_KEY, make_config
from tests.odata_support import (
    acme_rows,
    all_pages,
    basic,
    get_json,
    items_dataset,
    make_duckdb_items,
    pg_items,
    relative,
)
from tests.services import POSTGRES_DSN

SECRET_OLD = "old-secret-0123456789abcdef"
SECRET_NEW = "new-secret-0123456789abcdef"


@pytest.fixture
def duck_file(tmp_path: Path) -> Path:
    path = tmp_path / "items.duckdb"
    make_duckdb_items(path)
    return path


async def serve(aiohttp_client: Any, path: Path, **extra: Any) -> TestClient:
    odata = {"page_size": 10, "max_page_size": 50, **extra.pop("odata", {})}
    config = make_config(
        {
            "odata": odata,
            "backends": {"wh": {"type": "duckdb", "path": str(path)}},
            "datasets": {"items": items_dataset("wh", "items")},
            **extra,
        }
    )
    client: TestClient = await aiohttp_client(create_app(config))
    return client


async def first_link(client: TestClient, url: str, key: str = USER_KEY) -> str:
    page = await get_json(client, url, key)
    return relative(client, page["@odata.nextLink"])


async def refused(client: TestClient, url: str, key: str = USER_KEY) -> dict[str, Any]:
    response = await client.get(url, headers=basic(key))
    assert response.status == 400, await response.text()
    body: dict[str, Any] = (await response.json())["error"]
    assert body["code"] == "invalid_skiptoken" and "start the read again" in body["message"]
    return body


async def test_next_links_carry_a_signed_keyset_token_not_an_offset(
    aiohttp_client: Any, duck_file: Path
) -> None:
    client = await serve(aiohttp_client, duck_file)
    link = await first_link(client, "/odata/items?$select=id,name&$orderby=name desc")
    assert "$skiptoken=" in link and "$skip=" not in link and "$top" not in link
    rows = await all_pages(client, "/odata/items?$select=id,name&$orderby=name desc")
    assert len(rows) == len({r["id"] for r in rows}) == len(acme_rows())
    names = [r["name"] for r in rows]  # nulls last, each name's ids in key order
    present = [n for n in names if n is not None]
    assert present == sorted(present, reverse=True) and names[len(present) :] == [None] * (
        len(names) - len(present)
    )


async def test_client_skip_and_top_still_work_across_pages(
    aiohttp_client: Any, duck_file: Path
) -> None:
    client = await serve(aiohttp_client, duck_file)
    rows = await all_pages(client, "/odata/items?$select=id&$skip=5&$top=23")
    expected = sorted(r["id"] for r in acme_rows())[5:28]
    assert [r["id"] for r in rows] == expected
    link = await first_link(client, "/odata/items?$select=id&$skip=5&$top=23")
    assert (await client.get(link + "&$skip=1", headers=basic())).status == 400


async def test_tampered_cross_tenant_and_option_swapped_tokens_are_refused(
    aiohttp_client: Any, duck_file: Path
) -> None:
    client = await serve(aiohttp_client, duck_file)
    url = "/odata/items?$select=id,qty&$filter=" + quote("qty gt 0")
    link = await first_link(client, url)
    assert (await client.get(link, headers=basic())).status == 200
    prefix, token = link.split("$skiptoken=")
    body, mac = token.split(".")
    flipped = body[:-3] + ("A" if body[-3] != "A" else "B") + body[-2:]
    await refused(client, f"{prefix}$skiptoken={flipped}.{mac}")
    await refused(client, f"{prefix}$skiptoken=garbage")
    await refused(client, link, OTHER_TENANT_KEY)
    assert "qty+gt+0" in link
    await refused(client, link.replace("qty+gt+0", "qty+lt+0"))
    await refused(client, link.replace("$select=id,qty", "$select=id"))
    other = await first_link(client, "/odata/items?$select=id,qty&$filter=" + quote("qty lt 0"))
    await refused(client, f"{prefix}$skiptoken={other.split('$skiptoken=')[1]}")


async def test_a_restart_invalidates_links_and_rotation_keeps_them(
    aiohttp_client: Any, duck_file: Path
) -> None:
    before = await serve(aiohttp_client, duck_file)
    link = await first_link(before, "/odata/items?$select=id")
    after_restart = await serve(aiohttp_client, duck_file)  # its own random secret
    body = await refused(after_restart, link)
    assert "restarted" in body["message"]
    old = await serve(aiohttp_client, duck_file, odata={"skiptoken_secret": SECRET_OLD})
    signed = await first_link(old, "/odata/items?$select=id")
    rotated = await serve(
        aiohttp_client, duck_file, odata={"skiptoken_secret": f"{SECRET_NEW},{SECRET_OLD}"}
    )
    assert (await rotated.get(signed, headers=basic())).status == 200
    fresh = await first_link(rotated, "/odata/items?$select=id")
    assert (await old.get(fresh, headers=basic())).status == 400  # signed with the new one


async def test_max_page_size_preference_is_applied_and_said(
    aiohttp_client: Any, duck_file: Path
) -> None:
    client = await serve(aiohttp_client, duck_file)
    for asked, served in ((5, 5), (500, 50)):
        headers = {**basic(), "Prefer": f"odata.maxpagesize={asked}"}
        response = await client.get("/odata/items?$select=id", headers=headers)
        assert response.headers["Preference-Applied"] == f"odata.maxpagesize={served}"
        page = await response.json()
        assert len(page["value"]) == served and "@odata.nextLink" in page
    plain = await client.get("/odata/items?$select=id", headers=basic())
    assert "Preference-Applied" not in plain.headers
    assert len((await plain.json())["value"]) == 10


async def test_every_row_exactly_once_while_rows_are_inserted_between_pages(
    aiohttp_client: Any,
) -> None:
    start = dt.datetime(2026, 1, 1)
    rows = [
        {"id": i, "tenant_id": "acme", "name": f"n{i % 97}", "amount": decimal.Decimal(i % 500),
         "score": None, "qty": i % 7, "day": None, "seen_at": start,
         "paid_at": start.replace(tzinfo=dt.UTC), "flag": None}
        for i in range(1, 25_001)
    ]  # fmt: skip
    async with pg_items(rows) as schema:
        config = make_config(
            {
                "odata": {"page_size": 1000},
                "backends": {"pg": {"type": "postgres", "dsn": POSTGRES_DSN, "timeout_s": 10}},
                "datasets": {"items": items_dataset("pg", f"{schema}.items")},
            }
        )
        client = await aiohttp_client(create_app(config))
        writer = await asyncpg.connect(POSTGRES_DSN)
        seen: list[int] = []
        url = "/odata/items?$select=id,name"
        try:
            for page_number in range(100):
                page = await get_json(client, url)
                seen += [r["id"] for r in page["value"]]
                # Rows before and after the position, as another writer would add them.
                inserted = [(-page_number - 1,), (30_000 + page_number,)]
                await writer.executemany(
                    f"INSERT INTO {schema}.items (id, tenant_id, qty, seen_at, paid_at) "
                    "VALUES ($1, 'acme', 0, now(), now())",
                    inserted,
                )
                if "@odata.nextLink" not in page:
                    break
                url = relative(client, page["@odata.nextLink"])
        finally:
            await writer.close()
    assert len(seen) == len(set(seen)), "a row came twice"
    assert set(range(1, 25_001)) <= set(seen), "a row never came"
    assert not [i for i in seen if i < 0], "a row inserted behind the position came"


@pytest.fixture
async def cached_client(aiohttp_client: Any, duck_file: Path) -> AsyncIterator[TestClient]:
    yield await serve(aiohttp_client, duck_file, cache={"max_rows": 10})


async def test_pages_are_cached_per_tenant(cached_client: TestClient) -> None:
    url = "/odata/items?$select=id,qty"
    first = await cached_client.get(url, headers=basic())
    assert first.headers["X-Cache"] == "MISS"
    again = await cached_client.get(url, headers=basic())
    assert again.headers["X-Cache"] == "HIT" and "Age" in again.headers
    assert await again.read() == await first.read()
    assert again.headers["OData-Version"] == "4.0"
    assert again.headers["Content-Type"].startswith("application/json;odata.metadata=minimal")
    other = await cached_client.get(url, headers=basic(OTHER_TENANT_KEY))
    assert other.headers["X-Cache"] == "MISS"
    assert {r["id"] for r in (await other.json())["value"]}.isdisjoint(
        {r["id"] for r in (await first.json())["value"]}
    )
    fresh = await cached_client.get(url, headers={**basic(), "Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "MISS"
    bypass = await cached_client.get(url, headers={**basic(), "Cache-Control": "no-store"})
    assert bypass.headers["X-Cache"] == "BYPASS"
    link = relative(cached_client, (await first.json())["@odata.nextLink"])
    assert (await cached_client.get(link, headers=basic())).headers["X-Cache"] == "MISS"
    assert (await cached_client.get(link, headers=basic())).headers["X-Cache"] == "HIT"


async def test_pages_over_max_rows_are_not_stored(cached_client: TestClient) -> None:
    headers = {**basic(), "Prefer": "odata.maxpagesize=20"}
    for _ in range(2):
        response = await cached_client.get("/odata/items?$select=id", headers=headers)
        assert response.headers["X-Cache"] == "MISS"


async def test_a_dataset_definition_change_invalidates_cached_pages(
    aiohttp_client: Any, duck_file: Path, redis_prefix: str
) -> None:
    from tests.services import REDIS_URL

    shared = {"cache": {"backend": "redis"}, "redis": REDIS_URL, "redis_prefix": redis_prefix}
    first = await serve(aiohttp_client, duck_file, **shared)
    same = await serve(aiohttp_client, duck_file, **shared)
    url = "/odata/items?$select=id,name"
    # Replicas behind one host name: the pages' links are the same, so is the entry.
    headers = {**basic(), "Host": "tollway.example"}
    assert (await first.get(url, headers=headers)).headers["X-Cache"] == "MISS"
    assert (await same.get(url, headers=headers)).headers["X-Cache"] == "HIT"
    changed_dataset = items_dataset("wh", "items")
    changed_dataset["dimensions"]["name"] = "upper(name)"
    changed = await serve(aiohttp_client, duck_file, datasets={"items": changed_dataset}, **shared)
    response = await changed.get(url, headers=headers)
    assert response.headers["X-Cache"] == "MISS"
    names = {r["name"] for r in (await response.json())["value"]} - {None}
    assert names and all(n == n.upper() for n in names)


async def test_next_links_of_an_admitted_read_are_not_cut_by_the_minute_limit(
    aiohttp_client: Any, duck_file: Path
) -> None:
    client = await serve(
        aiohttp_client,
        duck_file,
        limits={"routes": {"odata": ["2/minute"]}},
        odata={"page_limits": ["100/minute"]},
    )
    rows = await all_pages(client, "/odata/items?$select=id")  # 18 pages, one admission
    assert len(rows) == len(acme_rows()) > 10 * 2
    second = await all_pages(client, "/odata/items?$select=id,qty")
    assert len(second) == len(acme_rows())
    third = await client.get("/odata/items?$select=id", headers=basic())
    assert third.status == 429 and "Retry-After" in third.headers


async def test_next_link_pages_have_their_own_ceiling(aiohttp_client: Any, duck_file: Path) -> None:
    client = await serve(aiohttp_client, duck_file, odata={"page_limits": ["3/minute"]})
    url = await first_link(client, "/odata/items?$select=id")
    statuses = []
    for _ in range(5):
        response = await client.get(url, headers=basic())
        statuses.append(response.status)
        if response.status == 200:
            url = relative(client, (await response.json())["@odata.nextLink"])
    assert statuses == [200, 200, 200, 429, 429]
