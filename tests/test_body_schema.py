"""Bodies that contradict the published schema are refused before any upstream call,
with a 400 naming the field; what the schema does not name passes through."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from gateway.edge.body import read_json
from gateway.edge.body_schema import compile_check
from gateway.errors import BadRequest
from gateway.routing import RouteSpec, route_specs_key
from tests.conftest import ADMIN_KEY, USER_KEY
from tests.fake_providers import FakeProvider
from tests.llm_support import Tollway
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture

HEADERS = {"Authorization": f"Bearer {USER_KEY}"}


@pytest.mark.parametrize(
    ("messages", "param", "problem"),
    [
        ([1, 2, 3], "messages[0]", "must be an object"),
        ([[[]]], "messages[0]", "must be an object"),
        ([{"content": "x"}], "messages[0].role", "is required"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role", "must be one of"),
        ([{"role": "user", "content": "x"}, {"role": "user", "content": 5}],
         "messages[1].content", "must be a string or null or an array"),
        ([{"role": "user", "content": ["text"]}], "messages[0].content[0]", "must be an object"),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0].type",
         "is required"),
        ([], "messages", "must have at least 1 item"),
        ("hello", "messages", "must be an array"),
    ],
)  # fmt: skip
async def test_chat_messages_that_contradict_the_schema_are_400_without_an_upstream_call(
    tollway: Tollway, fake: FakeProvider, messages: Any, param: str, problem: str
) -> None:
    client = await tollway()
    for stream in (False, True):
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "solo", "messages": messages, "stream": stream},
            headers=HEADERS,
        )
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["param"] == param
        assert problem in error["message"] and param in error["message"]
        assert error["type"] == "invalid_request_error" and error["request_id"]
    assert fake.hits("chat") == 0


async def test_fields_the_schema_does_not_name_pass_through_to_the_provider(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    message = {"role": "user", "content": [{"type": "text", "text": "x"}], "x_note": [1]}
    assistant = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}
    body = {"model": "solo", "messages": [message, assistant], "temperature": 0.2,
            "vendor_extension": {"deep": [[{"a": 1}]]}}  # fmt: skip
    response = await client.post("/v1/chat/completions", json=body, headers=HEADERS)
    assert response.status == 200, await response.text()
    seen = fake.seen[-1].body
    assert seen["vendor_extension"] == {"deep": [[{"a": 1}]]}
    assert seen["messages"][0]["x_note"] == [1] and seen["temperature"] == 0.2


async def test_a_route_that_only_declares_its_schema_is_checked(aiohttp_client: Any) -> None:
    """What another route (responses, completions, images, …) gets by declaring its body."""
    from gateway.app import create_app
    from tests.conftest import make_config

    reached: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        reached.append(await read_json(request))
        return web.json_response({"ok": True})

    schema = {
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
            },
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "size": {"enum": ["256x256", "1024x1024"]},
        },
    }
    app = create_app(make_config())
    route = app.router.add_post("/v1/test/images", handler)
    app[route_specs_key][route] = RouteSpec("chat", "llm", request_body=schema)
    client = await aiohttp_client(app)
    for body, param in (
        ({}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": ["a", 3]}, "prompt[1]"),
        ({"prompt": "a", "n": 0}, "n"),
        ({"prompt": "a", "n": 2.5}, "n"),
        ({"prompt": "a", "n": True}, "n"),
        ({"prompt": "a", "size": "9x9"}, "size"),
    ):
        response = await client.post("/v1/test/images", json=body, headers=HEADERS)
        assert response.status == 400, body
        assert (await response.json())["error"]["param"] == param, body
    assert reached == []
    ok = {"prompt": "a", "n": 2, "size": "256x256", "extra": {"anything": None}}
    assert (await client.post("/v1/test/images", json=ok, headers=HEADERS)).status == 200
    assert reached == [ok]


async def test_every_published_request_body_refuses_wrongly_typed_fields_with_400(
    tollway: Tollway, fake: FakeProvider
) -> None:
    """Each route's schema, from /openapi.json, with each named field set to a value of
    the wrong type: a 400 naming that field, never a 5xx, never an upstream call."""
    client = await tollway()
    document = await (await client.get("/openapi.json")).json()
    wrong = {"string": 12, "integer": "x", "number": "x", "boolean": "x", "array": "x",
             "object": "x"}  # fmt: skip
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            schema = (
                operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            ).get("schema")
            if not schema or "{" in path:
                continue
            for name, field in schema.get("properties", {}).items():
                kinds = field.get("type")
                if not isinstance(kinds, str) or kinds not in wrong:
                    continue
                body = {name: wrong[kinds]}
                key = ADMIN_KEY if path.startswith("/admin") else USER_KEY
                response = await client.request(
                    method, path, json=body, headers={"Authorization": f"Bearer {key}"}
                )
                assert response.status == 400, (path, name, await response.text())
                assert (await response.json())["error"]["param"] == name, (path, name)
                checked += 1
    assert checked >= 8
    assert fake.seen == []


def test_checks_follow_the_schema_not_the_body_depth() -> None:
    check = compile_check({"type": "object", "properties": {"a": {"type": "array"}}})
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    check({"a": deep}, "")  # no recursion into what the schema does not describe
    with pytest.raises(BadRequest):
        check({"a": {"b": deep}}, "")
