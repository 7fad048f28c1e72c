"""The protocol details BI tools trip on: 501 for what is not built, 400 for what is not
OData, OData-MaxVersion, nullability from the catalog, IEEE754Compatible, filters deep and
long, Power Query's request sequence on Postgres, and the real python-odata client."""

from __future__ import annotations

import asyncio
import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config.reader import ConfigError
from tests.conftest import USER_KEY, make_config
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

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
POWER_QUERY = {
    "User-Agent": "Microsoft.Data.Mashup (https://go.microsoft.com/fwlink/?LinkID=304225)",
    "MaxDataServiceVersion": "3.0",
    "OData-MaxVersion": "4.0",
    "Accept": "application/json;odata.metadata=minimal;q=1.0,application/json;"
    "odata=minimalmetadata;q=0.9,application/atomsvc+xml;q=0.8,application/atom+xml;q=0.8,"
    "application/xml;q=0.7,text/plain;q=0.7",
    "Accept-Encoding": "gzip, deflate",
}


async def serve(aiohttp_client: Any, backend: dict[str, Any], table: str, **extra: Any) -> Any:
    config = make_config(
        {
            "odata": {"page_size": 7, **extra.pop("odata", {})},
            "backends": {"wh": {**backend, "timeout_s": 5, "retries": 0}},
            "datasets": {"items": items_dataset("wh", table)},
            **extra,
        }
    )
    server = TestServer(create_app(config))
    await server.start_server(max_line_size=65536)  # serve.py sets it from server.max_url_bytes
    return await aiohttp_client(server)


@pytest.fixture
async def duck(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[TestClient]:
    make_duckdb_items(tmp_path / "items.duckdb")
    backend = {"type": "duckdb", "path": str(tmp_path / "items.duckdb")}
    yield await serve(aiohttp_client, backend, "items")


async def error(client: TestClient, url: str, status: int) -> dict[str, Any]:
    response = await client.get(url, headers=basic())
    assert response.status == status, (url, await response.text())
    assert response.headers.getall("OData-Version") == ["4.0"]
    body: dict[str, Any] = (await response.json())["error"]
    assert body["message"] and body["code"]
    return body


@pytest.mark.parametrize(
    "query",
    [
        "$expand=orders", "$apply=groupby((name))", "$search=north", "$compute=qty add 1 as q",
        "$filter=" + quote("tags/any(t: t eq 'x')"), "$filter=" + quote("tags/all(t: t ne 1)"),
        "$filter=" + quote("substringof('or', name)"), "$filter=" + quote("qty has 1"),
        "$filter=" + quote("geo.distance(a, b) lt 1"), "$filter=" + quote("now() gt seen_at"),
        "$filter=" + quote("seen_at lt duration'P1D'"),
        "$filter=" + quote("name eq @p") + "&@p='x'",
        "$orderby=" + quote("tolower(name)"), "$format=xml",
    ],
)  # fmt: skip
async def test_what_is_not_built_answers_501_naming_it(duck: TestClient, query: str) -> None:
    body = await error(duck, "/odata/items?" + query, 501)
    assert body["type"] == "not_implemented_error"


async def test_the_501_names_the_missing_function(duck: TestClient) -> None:
    body = await error(duck, "/odata/items?$filter=" + quote("substringof('or', name)"), 501)
    assert "substringof" in body["message"]


@pytest.mark.parametrize(
    "text",
    [
        "name eq", "name eq 'x", "(name eq 'x'", "name eq 'x')", "nope eq 1",
        "tenant_id eq 'acme'", "tolower(qty) eq 'x'", "name eq 5", "length(name, 1) eq 2",
        "name gt null", "day eq 2025-13-45",
        "qty add 'x' gt 1", "year(name) eq 2026", "hour(day) eq 1", "contains(qty, 'x')", "name",
        "seen_at lt 2026-01-02T25:00:00Z", "qty eq 99999999999999999999", "name eq eq", "",
    ],
)  # fmt: skip
async def test_filters_that_are_not_odata_answer_400(duck: TestClient, text: str) -> None:
    body = await error(duck, "/odata/items?$filter=" + quote(text), 400)
    assert body["param"] == "$filter"


@pytest.mark.parametrize(
    "query", ["$top=-1", "$skip=x", "$count=maybe", "$select=tenant_id", "$top=1&$TOP=2",
              "$orderby=name sideways", "$bogus=1", "custom=1"],
)  # fmt: skip
async def test_options_that_are_wrong_answer_400(duck: TestClient, query: str) -> None:
    await error(duck, "/odata/items?" + query, 400)


async def test_option_names_are_case_insensitive(duck: TestClient) -> None:
    page = await get_json(duck, "/odata/items?$SELECT=id&$Top=2&$FILTER=" + quote("qty EQ 3"))
    assert [set(r) for r in page["value"]] == [{"id"}, {"id"}]


async def test_odata_max_version_below_4_is_refused(duck: TestClient) -> None:
    for url in ("/odata/", "/odata/$metadata", "/odata/items", "/odata/items/$count"):
        response = await duck.get(url, headers={**basic(), "OData-MaxVersion": "3.0"})
        assert response.status == 400
        body = await response.json()
        assert "4.0" in body["error"]["message"]
    for version in ("4.0", "4.01"):
        headers = {**basic(), "OData-MaxVersion": version, "MaxDataServiceVersion": "3.0"}
        assert (await duck.get("/odata/items", headers=headers)).status == 200


async def test_ieee754_compatible_answers_int64_and_decimal_as_strings(duck: TestClient) -> None:
    accept = "application/json;odata.metadata=minimal;IEEE754Compatible=true"
    response = await duck.get(
        "/odata/items?$select=id,amount,score&$filter=amount ne null&$top=1",
        headers={**basic(), "Accept": accept},
    )
    assert "IEEE754Compatible=true" in response.headers["Content-Type"]
    row = (await response.json())["value"][0]
    assert isinstance(row["id"], str) and isinstance(row["amount"], str)
    assert not isinstance(row["score"], str)
    plain = (await get_json(duck, "/odata/items?$select=id,amount&$top=1"))["value"][0]
    assert isinstance(plain["id"], int)


async def test_deep_filters_are_refused_and_long_ones_served(duck: TestClient) -> None:
    deep = "(" * 3000 + "qty eq 1" + ")" * 3000
    body = await error(duck, "/odata/items?$filter=" + quote(deep), 400)
    assert "nested more than 50 levels" in body["message"]
    nots = "not " * 1300 + "qty eq 1"
    await error(duck, "/odata/items?$filter=" + quote(nots), 400)
    ids = sorted(r["id"] for r in acme_rows())
    one_page = {"Prefer": "odata.maxpagesize=1000"}
    chain = " or ".join(f"id eq {i}" for i in range(1, 1201))
    page = await get_json(duck, "/odata/items?$select=id&$filter=" + quote(chain), headers=one_page)
    assert sorted(r["id"] for r in page["value"]) == ids
    listed = "id in (" + ",".join(str(i) for i in range(1, 1201)) + ")"
    url = "/odata/items?$select=id&$filter=" + quote(listed)
    page = await get_json(duck, url, headers=one_page)
    assert sorted(r["id"] for r in page["value"]) == ids


async def test_power_bi_multi_select_slicer_shape_is_served(duck: TestClient) -> None:
    wanted = ["north", "rare", "O'Brien"] + [f"Region number {i:04d}" for i in range(247)]
    text = " or ".join(f"name eq '{n.replace(chr(39), chr(39) * 2)}'" for n in wanted)
    assert len(text) > 7000
    rows = await all_pages(duck, "/odata/items?$select=id&$filter=" + quote(text))
    expected = sorted(r["id"] for r in acme_rows() if r["name"] in wanted)
    assert expected and sorted(r["id"] for r in rows) == expected


async def test_filter_depth_limit_is_configurable(aiohttp_client: Any, tmp_path: Path) -> None:
    make_duckdb_items(tmp_path / "items.duckdb")
    backend = {"type": "duckdb", "path": str(tmp_path / "items.duckdb")}
    client = await serve(aiohttp_client, backend, "items", odata={"max_filter_depth": 3})
    assert (await client.get("/odata/items?$filter=((qty eq 1))", headers=basic())).status == 200
    response = await client.get("/odata/items?$filter=((not (qty eq 1)))", headers=basic())
    assert response.status == 400
    with pytest.raises(ConfigError, match=r"odata\.max_filter_depth"):
        make_config({"odata": {"max_filter_depth": 1000}})
    with pytest.raises(ConfigError, match=r"odata\.skiptoken_secret"):
        make_config({"odata": {"skiptoken_secret": "short"}})


def properties(xml: str) -> dict[str, dict[str, str | None]]:
    schema = ET.fromstring(xml)
    return {
        p.get("Name") or "": {"Type": p.get("Type"), "Nullable": p.get("Nullable")}
        for p in schema.iter(f"{EDM}Property")
    }


async def check_nullability(client: TestClient) -> None:
    response = await client.get("/odata/$metadata", headers=basic())
    found = properties(await response.text())
    not_null = {name for name, p in found.items() if p["Nullable"] == "false"}
    assert not_null == {"id", "qty", "seen_at", "paid_at"}
    assert found["paid_at"]["Type"] == found["seen_at"]["Type"] == "Edm.DateTimeOffset"
    page = await get_json(client, "/odata/items?$filter=name eq null and day eq null")
    assert page["value"] and all(set(row) == set(found) for row in page["value"])
    assert all(row["name"] is None and row["day"] is None for row in page["value"])


async def test_nullability_comes_from_duckdb(duck: TestClient) -> None:
    await check_nullability(duck)


async def test_nullability_comes_from_postgres(aiohttp_client: Any) -> None:
    async with pg_items() as schema:
        backend = {"type": "postgres", "dsn": POSTGRES_DSN}
        await check_nullability(await serve(aiohttp_client, backend, f"{schema}.items"))


async def test_power_query_replay_on_postgres(aiohttp_client: Any) -> None:
    async with pg_items() as schema:
        backend = {"type": "postgres", "dsn": POSTGRES_DSN}
        await power_query_replay(await serve(aiohttp_client, backend, f"{schema}.items"))


async def test_power_query_replay_on_duckdb(duck: TestClient) -> None:
    await power_query_replay(duck)


async def power_query_replay(client: TestClient) -> None:
    """Power Query's sequence with its exact headers: service document, $metadata, the
    $top=1000 preview twice, then a folded URL with a +01:00 filter and every next link."""
    headers = {**POWER_QUERY, **basic()}

    async def get(url: str) -> Any:
        response = await client.get(url, headers=headers)
        assert response.status == 200, await response.text()
        assert response.headers.getall("OData-Version") == ["4.0"]
        return response

    root = await (await get("/odata/")).json()
    assert [s["url"] for s in root["value"]] == ["items"]
    metadata = ET.fromstring(await (await get("/odata/$metadata")).text())
    for entity in metadata.iter(f"{EDM}EntityType"):
        assert [r.get("Name") for r in entity.iter(f"{EDM}PropertyRef")] == ["id"]
    previews = [await (await get("/odata/items?$top=1000")).json() for _ in range(2)]
    assert previews[0]["value"] == previews[1]["value"]
    assert len(previews[0]["value"]) == 7 and "@odata.nextLink" in previews[0]
    folded = (
        "/odata/items?$filter="
        + quote("paid_at lt 2026-01-09T10:30:00+01:00 and seen_at ge 2026-01-01T06:00:00+01:00")
        + "&$select=id,name,paid_at&$orderby=paid_at desc"
    )
    rows: list[dict[str, Any]] = []
    url = folded
    for _ in range(100):
        page = await (await get(url)).json()
        rows += page["value"]
        if "@odata.nextLink" not in page:
            break
        url = relative(client, page["@odata.nextLink"])
    lower = dt.datetime(2026, 1, 1, 5)  # naive: UTC
    upper = dt.datetime(2026, 1, 9, 9, 30, tzinfo=dt.UTC)
    truth = sorted(
        (r for r in acme_rows() if r["paid_at"] < upper and r["seen_at"] >= lower),
        key=lambda r: (-r["paid_at"].timestamp(), r["id"]),
    )
    assert len(truth) > 7
    assert [r["id"] for r in rows] == [r["id"] for r in truth]
    assert [dt.datetime.fromisoformat(r["paid_at"]) for r in rows] == [r["paid_at"] for r in truth]


def make_big_duckdb(path: Path) -> None:
    connection = duckdb.connect(str(path))
    connection.execute(
        "CREATE TABLE sales AS SELECT i AS id, CASE WHEN i % 5 = 0 THEN 'globex' ELSE 'acme' END "
        "AS tenant_id, ['north', 'south', 'east'][1 + i % 3] AS region, i % 100 AS qty "
        "FROM range(1, 31251) AS t(i)"
    )
    connection.close()


async def test_python_odata_client_reflects_pages_counts_and_filters(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    from odata import ODataService
    from requests.auth import HTTPBasicAuth

    make_big_duckdb(tmp_path / "sales.duckdb")
    config = make_config(
        {
            "odata": {"page_size": 5000},
            "backends": {"wh": {"type": "duckdb", "path": str(tmp_path / "sales.duckdb")}},
            "datasets": {
                "sales": {
                    "backend": "wh", "table": "sales", "tenant_column": "tenant_id", "key": ["id"],
                    "dimensions": {"id": "id", "region": "region", "qty": "qty"}, "metrics": {},
                }
            },
        }
    )  # fmt: skip
    client = await aiohttp_client(create_app(config))
    url = str(client.make_url("/odata/"))

    def read() -> tuple[int, int, int, int]:
        service = ODataService(
            url, reflect_entities=True, auth=HTTPBasicAuth("pbi", USER_KEY), quiet_progress=True
        )
        sales = service.entities["sales"]
        every = [row.id for row in service.query(sales)]
        north = service.query(sales).filter(sales.region == "north").filter(sales.qty >= 50)
        return len(every), len(set(every)), service.query(sales).count(), len(list(north))

    rows, distinct, counted, north = await asyncio.to_thread(read)
    assert rows == distinct == counted == 25_000
    assert north == sum(1 for i in range(1, 31251) if i % 5 and i % 3 == 0 and i % 100 >= 50)


HOSTILE = [
    "name eq 'x' or 1 eq 1", "name eq 'x'' or ''1''=''1'", "name eq 'x'; DROP TABLE items; --",
    "name eq 'x' or tenant_id eq 'globex'", "tenant_id ne 'acme'", "name eq '\\' or 1=1 --'",
    "name eq 'x' union select * from items", "name eq ''''", "contains(name, '%') or true",
    "startswith(name, '_')", "name eq '", "'", "((((", "))))", "name eq 'a' and", "or", "not",
    "name eq $1", "name eq ?", "name eq :p", "name eq 'x' /* comment */", "name -- eq 'x'",
    "length(name) gt 1e308", "qty eq 1.7976931348623157e309", "qty eq -", "qty eq --1",
    "day eq 9999-99-99", "seen_at gt 2026-01-01T00:00:00+99:99", "name eq 'é' and name eq '\u0000'",
    "substring(name, -1) eq 'x'", "substring(name, 99999999999) eq 'x'", "indexof(name) eq 1",
    "name in ()", "name in ('a',)", "name in ('a' 'b')", "x" * 5000, "name eq '" + "a" * 6000 + "'",
    "concat(" * 40 + "name" + ",'a')" * 40 + " eq 'x'", "cast(qty, Edm.String) eq '1'",
]  # fmt: skip


async def test_hostile_filters_never_answer_5xx_or_another_tenants_row(duck: TestClient) -> None:
    acme = {r["id"] for r in acme_rows()}
    for text in HOSTILE:
        response = await duck.get("/odata/items?$select=id&$filter=" + quote(text), headers=basic())
        assert response.status < 500 or response.status == 501, (text, response.status)
        body = await response.json()
        if response.status == 200:
            assert {r["id"] for r in body["value"]} <= acme, text
        else:
            assert set(body["error"]) >= {"message", "code", "type"}, text
