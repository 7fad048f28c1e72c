"""OData feeds over the demo warehouse in real DuckDB, read as Power Query reads them."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config.keyhash import hash_key
from tests.conftest import OTHER_TENANT_KEY, USER_KEY, base_config_data, make_config

NARROW_KEY = "tw_odata-narrow-0123456789abcdefghij"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    config = make_config(
        {
            "odata": {"page_size": 7, "key_param": "api_key"},
            "backends": {"wh": {"type": "duckdb", "demo": True}},
            "datasets": {
                "orders": {
                    "backend": "wh", "table": "orders", "tenant_column": "tenant_id",
                    "dimensions": {"region": "region", "day": "CAST(ordered_at AS DATE)",
                                   "at": "ordered_at"},
                    "metrics": {"revenue": "sum(amount)", "orders": "count(*)"},
                },
                "regions": {
                    "backend": "wh", "table": "orders", "tenant_column": "tenant_id",
                    "dimensions": {"region": "region"}, "metrics": {"orders": "count(*)"},
                },
            },
            "keys": base_config_data()["keys"]
            + [{"id": "narrow", "hash": hash_key(NARROW_KEY), "tenant": "acme",
                "scopes": ["odata"], "datasets": ["regions"]}],
        }
    )  # fmt: skip
    result: TestClient = await aiohttp_client(create_app(config))
    return result


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"powerbi:{key}".encode()).decode()}


async def get_json(client: TestClient, url: str, key: str = USER_KEY) -> Any:
    response = await client.get(url, headers=basic(key))
    assert response.status == 200, await response.text()
    assert response.headers["OData-Version"] == "4.0"
    return await response.json()


async def all_pages(client: TestClient, url: str, key: str = USER_KEY) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(1000):
        page = await get_json(client, url, key)
        rows += page["value"]
        if "@odata.nextLink" not in page:
            return rows
        url = page["@odata.nextLink"].split(str(client.make_url("")).rstrip("/"), 1)[1]
    raise AssertionError("paging never ended")


async def test_service_document_and_metadata_show_only_what_the_key_may_read(
    client: TestClient,
) -> None:
    root = await get_json(client, "/odata/")
    assert {s["name"] for s in root["value"]} == {"orders", "regions"}
    narrow = await get_json(client, "/odata/", NARROW_KEY)
    assert [s["name"] for s in narrow["value"]] == ["regions"]
    response = await client.get("/odata/$metadata", headers=basic(USER_KEY))
    assert response.content_type == "application/xml"
    schema = ET.fromstring(await response.text())
    types = {
        entity.get("Name"): {p.get("Name"): p.get("Type") for p in entity.iter(f"{EDM}Property")}
        for entity in schema.iter(f"{EDM}EntityType")
    }
    assert types["Orders"] == {
        "region": "Edm.String", "day": "Edm.Date", "at": "Edm.DateTimeOffset",
        "revenue": "Edm.Decimal", "orders": "Edm.Int64",
    }  # fmt: skip
    assert "tenant_id" not in await response.text()
    keys = [ref.get("Name") for ref in schema.iter(f"{EDM}PropertyRef")]
    assert {"region", "day", "at"} <= set(keys)


async def test_paging_returns_every_row_exactly_once(client: TestClient) -> None:
    rows = await all_pages(client, "/odata/regions")
    assert sorted(r["region"] for r in rows) == ["east", "north", "south", "west"]
    days = await all_pages(client, "/odata/orders?$select=day,orders")
    assert len(days) == len({r["day"] for r in days})  # no page repeated or skipped a row
    count = await client.get("/odata/orders/$count?$select=day", headers=basic(USER_KEY))
    assert int(await count.text()) == len(days)
    total = sum(r["orders"] for r in days)
    assert total == sum(r["orders"] for r in await all_pages(client, "/odata/regions"))


async def test_tenants_see_only_their_rows(client: TestClient) -> None:
    acme = await all_pages(client, "/odata/regions")
    globex = await all_pages(client, "/odata/regions", OTHER_TENANT_KEY)
    assert sum(r["orders"] for r in acme) == 2000 and sum(r["orders"] for r in globex) == 1000


async def test_filter_orderby_top_skip_and_count_are_pushed_down(client: TestClient) -> None:
    url = (
        "/odata/orders?$select=region,day,revenue&$orderby=revenue desc&$top=3&$count=true"
        "&$filter="
        + quote(
            "day ge 2026-02-01 and day lt 2026-03-01 and (region eq 'north' or region eq 'east')"
        )
    )
    page = await get_json(client, url)
    assert len(page["value"]) == 3 and "@odata.nextLink" not in page
    assert page["@odata.count"] > 3
    revenues = [row["revenue"] for row in page["value"]]
    assert revenues == sorted(revenues, reverse=True)
    assert all(
        row["region"] in ("north", "east") and row["day"].startswith("2026-02")
        for row in page["value"]
    )
    stamped = await get_json(
        client,
        "/odata/orders?$select=at&$top=1&$filter=" + quote("at gt 2026-03-01T00:00:00+01:00"),
    )
    assert stamped["value"][0]["at"].endswith("+00:00")


@pytest.mark.parametrize(
    "payload", ["north' or '1' eq '1", "x'; DROP TABLE orders; --", "' or tenant_id eq 'globex"]
)
async def test_filter_values_stay_values(client: TestClient, payload: str) -> None:
    escaped = payload.replace("'", "''")
    page = await get_json(client, "/odata/regions?$filter=" + quote(f"region eq '{escaped}'"))
    assert page["value"] == []


async def test_what_is_not_implemented_is_501_and_nonsense_is_400(client: TestClient) -> None:
    headers = basic(USER_KEY)
    for option in ("$expand=x", "$apply=groupby((region))", "$search=foo"):
        assert (await client.get(f"/odata/orders?{option}", headers=headers)).status == 501
    v3_only = "/odata/orders?$filter=" + quote("substringof('no', region)")
    assert (await client.get(v3_only, headers=headers)).status == 501
    nonsense = (
        "$filter=" + quote("nope eq 1"),
        "$filter=" + quote("region eq"),
        "$top=-1",
        "$select=tenant_id",
        "$orderby=revenue sideways",
        "$bogus=1",
    )
    for bad in nonsense:
        response = await client.get(f"/odata/orders?{bad}", headers=headers)
        assert response.status == 400, bad
    assert (await client.get("/odata/regions", headers=basic(NARROW_KEY))).status == 200
    assert (await client.get("/odata/orders", headers=basic(NARROW_KEY))).status == 403


async def test_keys_from_basic_auth_and_the_configured_query_parameter(client: TestClient) -> None:
    missing = await client.get("/odata/")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Basic")
    by_param = await client.get(f"/odata/regions?api_key={USER_KEY}")
    body = await by_param.json()
    assert by_param.status == 200 and body["value"]
    paged = await client.get(f"/odata/orders?$select=day&api_key={USER_KEY}")
    link = (await paged.json())["@odata.nextLink"]
    assert USER_KEY not in link and "api_key" not in link


async def test_the_key_given_as_a_query_parameter_is_never_logged(
    client: TestClient, log_lines: Any
) -> None:
    response = await client.get(f"/odata/orders?$select=day&api_key={USER_KEY}")
    assert response.status == 200
    assert log_lines() and not any(USER_KEY in line for line in log_lines())


def test_field_names_must_be_odata_identifiers() -> None:
    from gateway.config.reader import ConfigError

    dataset = {"backend": "wh", "table": "orders", "dimensions": {"order-date": "ordered_at"}}
    with pytest.raises(ConfigError, match=r"datasets\.o\.dimensions\.order-date"):
        make_config({"backends": {"wh": {"type": "duckdb"}}, "datasets": {"o": dataset}})


async def test_paging_ordered_by_a_metric_returns_every_group_once(client: TestClient) -> None:
    rows = await all_pages(client, "/odata/orders?$select=day,orders&$orderby=orders desc")
    days = [r["day"] for r in rows]
    assert len(days) == len(set(days)) > 7 * 3  # several pages, no group twice
    counts = [r["orders"] for r in rows]
    assert counts == sorted(counts, reverse=True)
    plain = await all_pages(client, "/odata/orders?$select=day,orders")
    assert sorted(days) == sorted(r["day"] for r in plain)
