"""The request path of the spine: error shape, auth, request ids, body limits, logs.

Routes that read bodies or fail on purpose are added to the real app (the same
middleware chain, the same `read_json`), because the spine itself has none.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config.keyhash import hash_key
from gateway.edge.body import read_json
from gateway.errors import BackendTimeout, BackendUnavailable, BadRequest
from gateway.routing import RouteSpec, route_specs_key
from tests.conftest import ADMIN_KEY, USER_KEY, make_config

ERROR_FIELDS = {"message", "type", "code", "param", "request_id"}


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await read_json(request)})


async def fail(request: web.Request) -> web.Response:
    kind = request.query.get("kind")
    if kind == "unavailable":
        raise BackendUnavailable("backend down", retry_after=7)
    if kind == "timeout":
        raise BackendTimeout("backend too slow")
    if kind == "bad":
        raise BadRequest("nope", param="model")
    raise RuntimeError("secret internals /etc/passwd")


def app_with_test_routes(extra: dict[str, Any] | None = None) -> web.Application:
    app = create_app(make_config(extra))
    spec = RouteSpec("query", "query")
    app[route_specs_key][app.router.add_post("/test/echo", echo)] = spec
    app[route_specs_key][app.router.add_get("/test/fail", fail)] = spec
    return app


@pytest.fixture
async def tclient(aiohttp_client: Any) -> Any:
    return await aiohttp_client(app_with_test_routes({"server": {"max_body_bytes": 1024}}))


def assert_error_shape(body: dict[str, Any], code: str | None = None) -> None:
    assert set(body["error"]) == ERROR_FIELDS
    if code is not None:
        assert body["error"]["code"] == code


async def test_unknown_route_is_404_in_the_error_shape(tclient: Any) -> None:
    response = await tclient.get("/v1/nothing-here")
    assert response.status == 404
    body = await response.json()
    assert_error_shape(body, "not_found")
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]


async def test_wrong_method_is_405_with_allow(tclient: Any) -> None:
    response = await tclient.delete("/health/live")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert_error_shape(await response.json(), "method_not_allowed")


async def test_bad_json_is_400(tclient: Any, auth: Callable[[str], dict[str, str]]) -> None:
    response = await tclient.post("/test/echo", data=b"{not json", headers=auth(USER_KEY))
    assert response.status == 400
    assert_error_shape(await response.json(), "invalid_request")


async def test_json_that_is_not_an_object_is_400(tclient: Any, auth: Any) -> None:
    response = await tclient.post("/test/echo", data=b"[1,2]", headers=auth(USER_KEY))
    assert response.status == 400


async def test_missing_key_is_401(tclient: Any) -> None:
    response = await tclient.post("/test/echo", json={})
    assert response.status == 401
    assert_error_shape(await response.json(), "invalid_api_key")


async def test_unknown_key_is_401(tclient: Any, auth: Any) -> None:
    response = await tclient.post("/test/echo", json={}, headers=auth("tw_wrong"))
    assert response.status == 401
    assert response.headers["x-should-retry"] == "false"


async def test_x_api_key_header_is_accepted(tclient: Any) -> None:
    response = await tclient.post("/test/echo", json={"a": 1}, headers={"X-API-Key": USER_KEY})
    assert response.status == 200
    assert await response.json() == {"got": {"a": 1}}


async def test_key_without_the_scope_is_403(tclient: Any, auth: Any) -> None:
    response = await tclient.post("/test/echo", json={}, headers=auth(ADMIN_KEY))
    assert response.status == 403
    assert_error_shape(await response.json(), "scope_missing")


async def test_detailed_health_needs_admin(tclient: Any, auth: Any) -> None:
    assert (await tclient.get("/health/detailed")).status == 401
    assert (await tclient.get("/health/detailed", headers=auth(USER_KEY))).status == 403
    response = await tclient.get("/health/detailed", headers=auth(ADMIN_KEY))
    assert response.status == 200
    body = await response.json()
    assert body["version"] and "config" in body
    assert ADMIN_KEY not in json.dumps(body) and hash_key(ADMIN_KEY) not in json.dumps(body)


async def test_declared_oversized_body_is_413_before_reading(tclient: Any, auth: Any) -> None:
    response = await tclient.post("/test/echo", data=b"x" * 2048, headers=auth(USER_KEY))
    assert response.status == 413
    assert_error_shape(await response.json(), "payload_too_large")


async def test_chunked_oversized_body_is_413(tclient: Any, auth: Any) -> None:
    async def chunks() -> Any:
        for _ in range(64):
            yield b"x" * 100

    response = await tclient.post("/test/echo", data=chunks(), headers=auth(USER_KEY))
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert response.status == 413
    assert_error_shape(await response.json(), "payload_too_large")


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("unavailable", 503, "backend_unavailable"), ("timeout", 504, "upstream_timeout"),
     ("bad", 400, "invalid_request")],
)  # fmt: skip
async def test_typed_errors_map_to_their_status(
    tclient: Any, auth: Any, kind: str, status: int, code: str
) -> None:
    response = await tclient.get(f"/test/fail?kind={kind}", headers=auth(USER_KEY))
    assert response.status == status
    assert_error_shape(await response.json(), code)


async def test_503_carries_retry_after(tclient: Any, auth: Any) -> None:
    response = await tclient.get("/test/fail?kind=unavailable", headers=auth(USER_KEY))
    assert response.headers["Retry-After"] == "7"


async def test_unexpected_exception_is_500_without_internals_and_logged(
    tclient: Any, auth: Any, log_lines: Callable[[], list[str]]
) -> None:
    response = await tclient.get("/test/fail", headers=auth(USER_KEY))
    assert response.status == 500
    text = await response.text()
    assert "passwd" not in text and "Traceback" not in text and "RuntimeError" not in text
    request_id = (await response.json())["error"]["request_id"]
    errors = [json.loads(line) for line in log_lines() if '"tollway.errors"' in line]
    assert errors and errors[0]["request_id"] == request_id
    assert "RuntimeError" in errors[0]["exc_info"]


async def test_a_sane_request_id_is_kept_and_an_insane_one_replaced(tclient: Any) -> None:
    kept = await tclient.get("/health/live", headers={"X-Request-ID": "abc-123.x:y"})
    assert kept.headers["X-Request-ID"] == "abc-123.x:y"
    replaced = await tclient.get("/health/live", headers={"X-Request-ID": "bad id\u00e9;"})
    assert replaced.headers["X-Request-ID"] != "bad id\u00e9;"
    assert len(replaced.headers["X-Request-ID"]) == 32


async def test_every_log_line_of_a_request_has_its_request_id(
    tclient: Any, auth: Any, log_lines: Callable[[], list[str]]
) -> None:
    await tclient.post(
        "/test/echo", json={"q": 1}, headers={**auth(USER_KEY), "X-Request-ID": "req-42"}
    )
    lines = [json.loads(line) for line in log_lines()]
    access = [line for line in lines if line["logger"] == "tollway.access"]
    assert access[-1]["request_id"] == "req-42"
    assert access[-1]["key_id"] == "app-1" and access[-1]["tenant"] == "acme"
    assert access[-1]["route"] == "/test/echo" and access[-1]["status"] == 200


async def test_no_log_line_contains_a_key_or_its_hash(
    tclient: Any, auth: Any, log_lines: Callable[[], list[str]]
) -> None:
    await tclient.post("/test/echo", json={"secret": "body"}, headers=auth(USER_KEY))
    await tclient.post("/test/echo", json={}, headers=auth(USER_KEY + "x"))
    await tclient.get("/test/fail", headers=auth(USER_KEY))
    text = "\n".join(log_lines())
    for secret in (USER_KEY, USER_KEY + "x", hash_key(USER_KEY).removeprefix("sha256:")):
        assert secret not in text
    assert '"body"' not in text


async def test_security_headers_on_json_answers(tclient: Any) -> None:
    response = await tclient.get("/health/live")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


async def test_probes_answer_without_a_key(tclient: Any) -> None:
    for path in ("/health/live", "/health/startup", "/health/ready", "/metrics"):
        assert (await tclient.get(path)).status == 200, path


async def test_cors_is_off_by_default(tclient: Any) -> None:
    response = await tclient.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_allows_configured_origins(aiohttp_client: Any) -> None:
    client = await aiohttp_client(
        create_app(make_config({"server": {"cors_origins": ["https://app.example.com"]}}))
    )
    ok = await client.get("/health/live", headers={"Origin": "https://app.example.com"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    other = await client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_concurrent_requests_keep_their_own_request_ids(tclient: Any, auth: Any) -> None:
    ids = [f"r{i}" for i in range(20)]
    responses = await asyncio.gather(
        *(tclient.get("/health/live", headers={"X-Request-ID": i}) for i in ids)
    )
    assert [r.headers["X-Request-ID"] for r in responses] == ids


async def test_access_lines_to_a_file_go_out_in_batches_not_one_write_each(
    tmp_path: Any,
) -> None:
    import logging

    from gateway.ops.logs import AccessLines, configure_logging

    path = tmp_path / "access.log"
    with open(path, "w") as stream:  # noqa: ASYNC230 - a test file, once
        handler = configure_logging("info", stream)
        try:
            lines = AccessLines(asyncio.get_running_loop(), flush_s=0.05)
            for n in range(100):
                lines.write({"request_id": f"r{n}"})
            assert path.read_text() == ""  # nothing written yet: one write will carry them
            await asyncio.sleep(0.1)
            assert path.read_text().count('"message":"request"') == 100
            lines.write({"request_id": "last"})
            lines.flush()  # as at shutdown
            assert '"request_id":"last"' in path.read_text()
        finally:
            logging.getLogger().removeHandler(handler)
