"""Probes, metrics, /openapi.json and graceful shutdown of a served app."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config
from gateway.ops.lifecycle import state_key
from gateway.routing import RouteSpec, route_specs_key
from gateway.serve import serve
from tests.conftest import USER_KEY, make_config
from tests.test_request_path import app_with_test_routes


async def test_openapi_describes_exactly_the_routed_paths(aiohttp_client: Any) -> None:
    app = create_app(make_config())
    client = await aiohttp_client(app)
    document = await (await client.get("/openapi.json")).json()
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert documented == routed
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]


async def test_metrics_label_routes_by_template_not_raw_path(
    aiohttp_client: Any, auth: Any
) -> None:
    client = await aiohttp_client(app_with_test_routes())
    await client.get("/health/live")
    await client.get("/no/such/path/123")
    await client.get("/no/such/path/456")
    text = await (await client.get("/metrics")).text()
    assert 'tollway_requests_total{method="GET",route="/health/live",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"} 2.0' in text
    assert "/no/such/path" not in text
    assert "tollway_request_duration_seconds_bucket" in text
    assert 'le="0.0005"' in text and 'le="120.0"' in text
    assert "tollway_event_loop_lag_seconds" in text
    assert "tollway_requests_in_flight" in text


async def test_startup_and_ready_probes_follow_the_lifecycle(aiohttp_client: Any) -> None:
    app = create_app(make_config())
    client = await aiohttp_client(app)
    assert (await client.get("/health/startup")).status == 200
    assert (await client.get("/health/ready")).status == 200
    app[state_key].draining = True
    response = await client.get("/health/ready")
    assert response.status == 503
    assert (await response.json())["status"] == "draining"
    assert (await client.get("/health/live")).status == 200


async def test_sigterm_lets_an_in_flight_request_finish_then_stops(unused_tcp_port: int) -> None:
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(1.0)
        return web.json_response({"done": True})

    def factory(config: Config) -> web.Application:
        app = create_app(config)
        app[route_specs_key][app.router.add_get("/test/slow", slow)] = RouteSpec("query", "query")
        return app

    config = make_config({"server": {"port": unused_tcp_port, "shutdown_timeout_s": 10}})
    ready = asyncio.Event()
    server = asyncio.ensure_future(
        serve(config, app_factory=factory, on_ready=lambda _addresses: ready.set())
    )
    await asyncio.wait_for(ready.wait(), 10)
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.ensure_future(
            session.get(f"{url}/test/slow", headers={"Authorization": f"Bearer {USER_KEY}"})
        )
        await asyncio.wait_for(entered.wait(), 10)
        os.kill(os.getpid(), signal.SIGTERM)
        response = await asyncio.wait_for(in_flight, 10)
        assert response.status == 200
        assert await response.json() == {"done": True}
        await asyncio.wait_for(server, 10)
        try:
            await session.get(f"{url}/health/live")
        except aiohttp.ClientConnectionError:
            pass
        else:
            raise AssertionError("the stopped server still accepted a connection")


def test_serve_without_config_is_ready_within_a_second_and_prints_the_demo_key(
    tmp_path: Any, unused_tcp_port: int
) -> None:
    import subprocess
    import sys
    import time
    import urllib.request

    env = {**os.environ, "TOLLWAY_PORT": str(unused_tcp_port)}
    env.pop("TOLLWAY_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        started = time.monotonic()
        ready_after = None
        while time.monotonic() - started < 10:
            try:
                url = f"http://127.0.0.1:{unused_tcp_port}/health/ready"
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        ready_after = time.monotonic() - started
                        break
            except OSError:
                time.sleep(0.02)
        assert ready_after is not None, "never became ready"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        demo_lines = [line for line in output.splitlines() if line.startswith("Demo key")]
        assert len(demo_lines) == 1 and "tw_" in demo_lines[0]
        # Interpreter start-up is most of it; the bar is "within a second" on an idle
        # machine, asserted loosely here because the test machine is shared.
        assert ready_after < 5.0
    finally:
        if process.poll() is None:
            process.kill()
