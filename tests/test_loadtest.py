"""The users' load test, run briefly against a local Tollway in front of the fake providers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.loadtest import run
from gateway.app import create_app
from tests.conftest import USER_KEY, make_config, merge
from tests.fake_providers import FakeProvider
from tests.llm_support import llm_config


async def test_a_short_mixed_run_reports_every_class(
    aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = FakeProvider()
    upstream = await aiohttp_server(provider.app())
    data = merge(
        llm_config(str(upstream.make_url("")).rstrip("/")),
        {
            "backends": {"wh": {"type": "duckdb", "demo": True}},
            "datasets": {
                "orders": {
                    "backend": "wh", "table": "orders", "tenant_column": "tenant_id",
                    "dimensions": {"region": "region"}, "metrics": {"orders": "count(*)"},
                }
            },
        },
    )  # fmt: skip
    gateway = await aiohttp_server(create_app(make_config(data)))
    out = tmp_path / "report.json"
    await run([
        "--url", str(gateway.make_url("")), "--key", USER_KEY, "--rate", "40", "--ramp", "0.5",
        "--duration", "2", "--requests", "60", "--odata-set", "orders", "--seed", "1",
        "--embedding-model", "gpt-4o-mini", "--out", str(out),
    ])  # fmt: skip
    report = json.loads(out.read_text())
    assert 20 <= report["total_requests"] <= 60
    printed = capsys.readouterr().out
    assert "req/s" in printed
    for name, figures in report["classes"].items():
        assert figures["requests"] > 0, name
        assert figures["p99_ms"] is not None, name
        ok = figures["statuses"].get("200", 0)
        assert ok > 0 and figures["errors"] == 0, (name, figures["statuses"])
    assert report["classes"]["chat_stream"]["ttft_p99_ms"] is not None


async def test_it_counts_errors_and_limit_rejections(aiohttp_server: Any, tmp_path: Path) -> None:
    gateway = await aiohttp_server(create_app(make_config({"limits": {"per_ip": ["3/minute"]}})))
    out = tmp_path / "report.json"
    await run([
        "--url", str(gateway.make_url("")), "--key", "tw_wrong-key-000000000000000000000",
        "--mix", "search=1", "--rate", "50", "--ramp", "0", "--duration", "1",
        "--requests", "10", "--out", str(out),
    ])  # fmt: skip
    figures = json.loads(out.read_text())["classes"]["search"]
    assert figures["requests"] == 10
    assert figures["errors"] + figures["limit_rejections"] == 10
    assert figures["limit_rejections"] > 0


async def test_it_refuses_an_unknown_class() -> None:
    with pytest.raises(SystemExit):
        await run(["--url", "http://127.0.0.1:9", "--key", "k", "--mix", "nope=1"])
