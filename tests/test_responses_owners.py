"""Stored responses are tenant-bound: tenant B gets 404 for tenant A's response id on every
route that takes one, while A succeeds; ids Tollway never relayed fail closed; the binding
lives in the state store (SQLite and Postgres) and expires."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.state.response_owners import ResponseOwner, ResponseOwnerQueries
from gateway.state.store import open_store
from tests.conftest import OTHER_TENANT_KEY, USER_KEY
from tests.fake_openai_surface import RESPONSE_TEXT
from tests.fake_providers import FakeProvider
from tests.llm_support import Tollway, metrics_text, sdk
from tests.llm_support import tollway as tollway  # noqa: F401 - a fixture

A = {"Authorization": f"Bearer {USER_KEY}"}
B = {"Authorization": f"Bearer {OTHER_TENANT_KEY}"}


async def _created(client: Any, **extra: Any) -> str:
    response = await sdk(client).responses.create(model="gpt-4o-mini", input="hi", **extra)
    return response.id


async def test_another_tenant_gets_404_for_a_response_id_on_every_route_while_the_owner_succeeds(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    owner, other = sdk(client, USER_KEY), sdk(client, OTHER_TENANT_KEY)
    response_id = await _created(client)
    calls = {
        "retrieve": lambda c: c.responses.retrieve(response_id),
        "input_items": lambda c: c.responses.input_items.list(response_id),
        "previous_response_id": lambda c: c.responses.create(
            model="gpt-4o-mini", input="and then?", previous_response_id=response_id
        ),
        "cancel": lambda c: c.responses.cancel(response_id),
        "delete": lambda c: c.responses.delete(response_id),
    }
    for name, call in calls.items():
        seen_before = len(fake.seen)
        with pytest.raises(openai.NotFoundError) as raised:
            await call(other)
        assert len(fake.seen) == seen_before, f"{name}: the upstream was asked"
        assert response_id in raised.value.message, name
        answer = await call(owner)
        if name == "retrieve":
            assert answer.output_text == RESPONSE_TEXT
        if name == "input_items":
            assert [item.id async for item in answer] == ["msg_in"]
        if name == "previous_response_id":
            assert answer.previous_response_id == response_id
    assert 'tollway_response_id_refusals_total{reason="other_tenant"} 5.0' in await metrics_text(
        client
    )


async def test_a_foreign_previous_response_id_keeps_the_code_clients_key_on(
    tollway: Tollway,
) -> None:
    client = await tollway()
    response_id = await _created(client)
    answer = await client.post(
        "/v1/responses",
        json={"model": "gpt-4o-mini", "input": "x", "previous_response_id": response_id},
        headers=B,
    )
    assert answer.status == 404
    error = (await answer.json())["error"]
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"


async def test_a_response_id_tollway_never_relayed_is_404_even_if_the_upstream_has_it(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    fake.stored["resp_elsewhere"] = {"id": "resp_elsewhere", "object": "response", "output": []}
    answer = await client.get("/v1/responses/resp_elsewhere", headers=A)
    assert answer.status == 404
    assert not any(s.path.endswith("resp_elsewhere") for s in fake.seen)


async def test_an_id_that_could_reach_another_upstream_path_is_404(tollway: Tollway) -> None:
    client = await tollway()
    answer = await client.get("/v1/responses/..%2F..%2Fmodels", headers=A)
    assert answer.status == 404


async def test_a_conversation_answers_404_since_no_tenant_can_own_one_here(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk(client).responses.create(model="gpt-4o-mini", input="x", conversation="conv_1")
    assert raised.value.code == "conversation_not_found"
    assert fake.hits("responses") == 0


async def test_a_stream_binds_its_response_id_from_its_first_event(tollway: Tollway) -> None:
    client = await tollway()
    stream = await sdk(client).responses.create(model="gpt-4o-mini", input="x", stream=True)
    response_id = None
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
    assert response_id is not None
    assert (await client.get(f"/v1/responses/{response_id}", headers=A)).status == 200
    assert (await client.get(f"/v1/responses/{response_id}", headers=B)).status == 404


async def test_a_continued_response_goes_only_to_the_backend_that_holds_it(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway({"backends": {"groq": {"apis": ["chat", "responses"]}}})
    response_id = await _created(client)  # made on "openai"
    fake.script("responses", "500", "500", "500")  # the primary fails, retries included
    answer = await client.post(
        "/v1/responses",
        json={"model": "gpt-4o-mini", "input": "x", "previous_response_id": response_id},
        headers=A,
    )
    assert answer.status == 500  # no fallback to groq, which does not hold it
    assert not any(s.path == "/openai/v1/responses" for s in fake.seen)
    elsewhere = await client.post(
        "/v1/responses",
        json={"model": "llama-3.1-8b-instant", "input": "x", "previous_response_id": response_id},
        headers=A,
    )
    assert elsewhere.status == 400
    assert (await elsewhere.json())["error"]["code"] == "previous_response_elsewhere"


async def test_a_response_not_stored_is_not_bound(tollway: Tollway) -> None:
    client = await tollway()
    response_id = await _created(client, store=False)
    assert (await client.get(f"/v1/responses/{response_id}", headers=A)).status == 404


async def test_a_deleted_response_is_forgotten(tollway: Tollway, fake: FakeProvider) -> None:
    client = await tollway()
    response_id = await _created(client)
    assert (await client.delete(f"/v1/responses/{response_id}", headers=A)).status == 200
    assert (await client.get(f"/v1/responses/{response_id}", headers=A)).status == 404


async def test_the_binding_outlives_the_process_in_the_state_store(
    tollway: Tollway, tmp_path: Path
) -> None:
    state = {"state": f"sqlite:///{tmp_path / 'state.db'}"}
    first = await tollway(state)
    response_id = await _created(first)
    await first.close()
    second = await tollway(state)
    assert (await second.get(f"/v1/responses/{response_id}", headers=A)).status == 200
    assert (await second.get(f"/v1/responses/{response_id}", headers=B)).status == 404


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: Any, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


async def test_owner_rows_expire_and_are_purged(state_url: str) -> None:
    store = open_store(state_url)
    await store.migrate()
    owners = ResponseOwnerQueries(store)
    now = time.time()
    try:
        await owners.save(ResponseOwner("resp_old", "acme", "openai", "m", "k", now - 1), now - 9)
        await owners.save(ResponseOwner("resp_new", "acme", "openai", "m", "k", now + 60), now)
        await owners.save(ResponseOwner("resp_new", "evil", "openai", "m", "k", now + 60), now)
        assert await owners.get("resp_old", now) is None
        found = await owners.get("resp_new", now)
        assert found is not None and found.tenant == "acme"  # the first tenant keeps it
        assert await owners.purge(now) == 1
        rows = await store.fetch("SELECT id FROM tollway_response_owners")
        assert [r[0] for r in rows] == ["resp_new"]
    finally:
        await store.close()


async def test_a_store_that_cannot_answer_fails_closed_with_503(tollway: Tollway) -> None:
    from tests.services import free_port

    client = await tollway({"state": f"postgresql://postgres@127.0.0.1:{free_port()}/gone"})
    answer = await client.get("/v1/responses/resp_unseen", headers=A)
    assert answer.status == 503
    assert (await answer.json())["error"]["code"] == "state_store_unavailable"


async def test_a_stored_response_replayed_as_a_stream_is_tenant_bound_too(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    response_id = await _created(client)
    path = f"/v1/responses/{response_id}?stream=true&starting_after=0"
    assert (await client.get(path, headers=B)).status == 404
    replay = await client.get(path, headers=A)
    assert replay.headers["Content-Type"] == "text/event-stream"
    body = await replay.read()
    assert body.startswith(b"event: response.completed\ndata: ")
    assert fake.seen[-1].body == {"stream": "true", "starting_after": "0"}


async def test_response_routes_not_relayed_here_never_reach_the_upstream(
    tollway: Tollway, fake: FakeProvider
) -> None:
    client = await tollway()
    for path in ("/v1/responses/input_tokens", "/v1/responses/compact"):
        answer = await client.post(path, json={"model": "gpt-4o-mini", "input": "x"}, headers=A)
        assert answer.status in (404, 405)
    assert fake.seen == []


async def test_a_binding_lasts_responses_ttl_s(tollway: Tollway) -> None:
    from gateway.state.service import state_service_key

    client = await tollway({"server": {"responses_ttl_s": 3600}})
    response_id = await _created(client)
    rows = await client.app[state_service_key].store.fetch(
        "SELECT tenant, backend, expires_at - created_at FROM tollway_response_owners "
        "WHERE id = ?",
        (response_id,),
    )
    assert [tuple(r) for r in rows] == [("acme", "openai", pytest.approx(3600))]
