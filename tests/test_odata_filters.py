"""Every `$filter` function and literal kind, on real DuckDB and the machine's Postgres,
answers exactly the rows the same question computed in Python over the same rows."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import make_config
from tests.odata_support import acme_rows, all_pages, items_dataset, make_duckdb_items, pg_items
from tests.services import POSTGRES_DSN

Row = dict[str, Any]
Case = tuple[str, Callable[[Row], bool]]
UTC = dt.UTC


@pytest.fixture(params=["duckdb", "postgres"])
async def feed(request: Any, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[TestClient]:
    """A Tollway serving `items` from one backend, one page holding every row."""
    if request.param == "duckdb":
        make_duckdb_items(tmp_path / "items.duckdb")
        backend = {"type": "duckdb", "path": str(tmp_path / "items.duckdb")}
        async with _serve(aiohttp_client, backend, "items") as client:
            yield client
    else:
        async with pg_items() as schema:
            backend = {"type": "postgres", "dsn": POSTGRES_DSN, "pool": {"min": 1, "max": 2}}
            async with _serve(aiohttp_client, backend, f"{schema}.items") as client:
                yield client


class _serve:
    def __init__(self, aiohttp_client: Any, backend: dict[str, Any], table: str) -> None:
        self.config = make_config(
            {
                "odata": {"page_size": 1000},
                "backends": {"wh": {**backend, "timeout_s": 5, "retries": 0}},
                "datasets": {"items": items_dataset("wh", table)},
            }
        )
        self.aiohttp_client = aiohttp_client

    async def __aenter__(self) -> TestClient:
        client: TestClient = await self.aiohttp_client(create_app(self.config))
        return client

    async def __aexit__(self, *exc: object) -> None:
        return None


async def check(client: TestClient, cases: list[Case]) -> None:
    wrong = []
    for text, predicate in cases:
        rows = await all_pages(client, "/odata/items?$select=id&$filter=" + quote(text))
        got = sorted(r["id"] for r in rows)
        expected = sorted(r["id"] for r in acme_rows() if predicate(r))
        if got != expected:
            wrong.append(f"{text}: got {len(got)} rows, expected {len(expected)}")
        assert expected or "null" in text, f"{text} selects nothing: a weak case"
    assert not wrong, "\n".join(wrong)


def text(column: str, test: Callable[[str], bool]) -> Callable[[Row], bool]:
    return lambda r: r[column] is not None and test(r[column])


async def test_string_functions(feed: TestClient) -> None:
    await check(feed, [
        ("contains(name,'r')", text("name", lambda s: "r" in s)),
        ("contains(name,'%')", text("name", lambda s: "%" in s)),
        ("contains(name,'_')", text("name", lambda s: "_" in s)),
        ("startswith(name,'a_')", text("name", lambda s: s.startswith("a_"))),
        ("endswith(name,'off')", text("name", lambda s: s.endswith("off"))),
        ("not contains(name,'o')", text("name", lambda s: "o" not in s)),
        ("tolower(name) eq 'mixed'", text("name", lambda s: s.lower() == "mixed")),
        ("toupper(name) eq 'NORTH'", text("name", lambda s: s.upper() == "NORTH")),
        ("length(name) gt 5", text("name", lambda s: len(s) > 5)),
        ("length(name) eq 5", text("name", lambda s: len(s) == 5)),
        ("trim(name) eq 'padded'", text("name", lambda s: s.strip(" ") == "padded")),
        ("concat(name,'!') eq 'north!'", text("name", lambda s: s + "!" == "north!")),
        ("concat(concat(name,'-'),name) eq 'rare-rare'", text("name", lambda s: s == "rare")),
        ("indexof(name,'r') eq 2", text("name", lambda s: s.find("r") == 2)),
        ("indexof(name,'zz') eq -1", text("name", lambda s: s.find("zz") == -1)),
        ("substring(name,1) eq 'orth'", text("name", lambda s: s[1:] == "orth")),
        ("substring(name,1,2) eq 'rb'", text("name", lambda s: s[1:3] == "rb")),
        ("name eq 'O''Brien'", text("name", lambda s: s == "O'Brien")),
        ("name eq 'Ärger'", text("name", lambda s: s == "Ärger")),
        ("name in ('north','MiXeD','nobody')", text("name", lambda s: s in ("north", "MiXeD"))),
        ("startswith(tolower(name),'m') or endswith(name,'e')",
         text("name", lambda s: s.lower().startswith("m") or s.endswith("e"))),
    ])  # fmt: skip


JAN_10, JAN_15 = dt.date(2026, 1, 10), dt.date(2026, 1, 15)


def utc(value: Any) -> dt.datetime:
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def stamp(column: str, test: Callable[[dt.datetime], bool]) -> Callable[[Row], bool]:
    return lambda r: test(utc(r[column]))


async def test_date_and_time_functions(feed: TestClient) -> None:
    await check(feed, [
        ("year(day) eq 2025", lambda r: r["day"] is not None and r["day"].year == 2025),
        ("month(day) eq 2", lambda r: r["day"] is not None and r["day"].month == 2),
        ("day(day) ge 28", lambda r: r["day"] is not None and r["day"].day >= 28),
        ("year(seen_at) eq 2026 and month(seen_at) eq 3", stamp("seen_at", lambda t: t.month == 3)),
        ("day(paid_at) eq 7", stamp("paid_at", lambda t: t.day == 7)),
        ("hour(seen_at) eq 13", stamp("seen_at", lambda t: t.hour == 13)),
        ("hour(paid_at) eq 13", stamp("paid_at", lambda t: t.hour == 13)),
        ("minute(seen_at) lt 10", stamp("seen_at", lambda t: t.minute < 10)),
        ("second(seen_at) eq 3", stamp("seen_at", lambda t: t.second == 3)),
        ("date(paid_at) eq 2026-01-15", stamp("paid_at", lambda t: t.date() == JAN_15)),
        ("date(seen_at) lt 2026-01-10", stamp("seen_at", lambda t: t.date() < JAN_10)),
        ("time(seen_at) lt 06:00:00", stamp("seen_at", lambda t: t.time() < dt.time(6))),
        ("time(paid_at) ge 22:30", stamp("paid_at", lambda t: t.time() >= dt.time(22, 30))),
    ])  # fmt: skip


def number(column: str, test: Callable[[Any], bool]) -> Callable[[Row], bool]:
    return lambda r: r[column] is not None and test(r[column])


def half_away(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return value.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP)
    return math.copysign(math.floor(abs(value) + 0.5), value)


async def test_math_functions_and_arithmetic(feed: TestClient) -> None:
    await check(feed, [
        ("round(amount) eq 30", number("amount", lambda a: half_away(a) == 30)),
        ("floor(amount) eq 30", number("amount", lambda a: math.floor(a) == 30)),
        ("ceiling(amount) eq 30", number("amount", lambda a: math.ceil(a) == 30)),
        ("round(score) eq 2", number("score", lambda s: half_away(s) == 2)),
        ("round(score) eq -3", number("score", lambda s: half_away(s) == -3)),
        ("floor(score) eq -3", number("score", lambda s: math.floor(s) == -3)),
        ("ceiling(score) eq 1", number("score", lambda s: math.ceil(s) == 1)),
        ("amount add 1 gt 50", number("amount", lambda a: a + 1 > 50)),
        ("amount sub 0.5 le 10", number("amount", lambda a: a - decimal.Decimal("0.5") <= 10)),
        ("qty mul 2 eq 6", lambda r: r["qty"] * 2 == 6),
        ("qty div 2 eq -1", lambda r: math.trunc(r["qty"] / 2) == -1),
        ("qty mod 3 eq -1", lambda r: math.fmod(r["qty"], 3) == -1),
        ("qty div 0 eq null", lambda r: True),
        ("amount div 4 gt 10", number("amount", lambda a: a / 4 > 10)),
        ("-qty gt 2", lambda r: -r["qty"] > 2),
        ("score mul 2 ge 4.5", number("score", lambda s: s * 2 >= 4.5)),
        ("qty add score eq 0", lambda r: r["score"] is not None and r["qty"] + r["score"] == 0),
    ])  # fmt: skip


def at_utc(literal: str) -> dt.datetime:
    text = literal[:-1] + "+00:00" if literal.endswith("Z") else literal
    return dt.datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


async def test_date_time_offset_literals_with_any_offset(feed: TestClient) -> None:
    literals = [
        "2026-01-02T10:30:00+01:00", "2026-01-02T10:30:00Z", "2026-01-02T04:30:00-05:00",
        "2026-01-09T03:17:02.25+05:30", "2026-02-01T00:00Z", "2026-01-03T18:00:00.123456789-08:00",
    ]  # fmt: skip
    cases: list[Case] = []
    for literal in literals:
        moment = at_utc(literal)
        cases += [
            (f"seen_at lt {literal}", stamp("seen_at", lambda t, m=moment: t < m)),
            (f"paid_at ge {literal}", stamp("paid_at", lambda t, m=moment: t >= m)),
        ]
    exact = ITEM_7_AT
    cases += [
        (f"seen_at eq {exact}", stamp("seen_at", lambda t: t == at_utc(exact))),
        ("paid_at gt 2026-01-02 and paid_at lt 2026-01-05", stamp(
            "paid_at", lambda t: dt.datetime(2026, 1, 2) < t < dt.datetime(2026, 1, 5))),
    ]  # fmt: skip
    await check(feed, cases)


ITEM_7_AT = "2026-01-03T03:19:00.750+05:00"  # item 7's `seen_at` (22:19:00.75 UTC), shifted


async def test_other_literals_and_logic(feed: TestClient) -> None:
    await check(feed, [
        ("day lt 2025-03-01", lambda r: r["day"] is not None and r["day"] < dt.date(2025, 3, 1)),
        ("day eq 2025-01-22", lambda r: r["day"] == dt.date(2025, 1, 22)),
        ("day eq null", lambda r: r["day"] is None),
        ("name ne null and amount eq null",
         lambda r: r["name"] is not None and r["amount"] is None),
        ("amount eq 12.95", lambda r: r["amount"] == decimal.Decimal("12.95")),
        ("amount ge 59", number("amount", lambda a: a >= 59)),
        ("score lt -2.5e0", number("score", lambda s: s < -2.5)),
        ("score eq 1.5", number("score", lambda s: s == 1.5)),
        ("qty ge -2 and qty le 1", lambda r: -2 <= r["qty"] <= 1),
        ("flag eq true", lambda r: r["flag"] is True),
        ("flag", lambda r: r["flag"] is True),
        ("not flag", lambda r: r["flag"] is False),
        ("flag eq false or (qty eq 4 and not (name eq 'rare'))",
         lambda r: r["flag"] is False or (r["qty"] == 4 and r["name"] is not None
                                          and r["name"] != "rare")),
        ("id in (3, 5, 7) or id eq 9", lambda r: r["id"] in (3, 5, 7, 9)),
    ])  # fmt: skip
