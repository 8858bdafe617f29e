"""The 1.0.x alternate request syntax: POST ?method=X with the request in a form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from realparts.learninglocker import LearningLockerServer
from support import FakeLRS, basic, credential, write_config

from gateway.http.app import create_app

Client = TestClient[web.Request, web.Application]
WRITER = credential("writer", "writer-pw", ["statements/write", "state"])
READER = credential("reader", "reader-pw", ["statements/read"])
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
STATEMENT = {
    "actor": {"mbox": "mailto:learner@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course/alt"},
}
SID = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"


@pytest.fixture
async def gateway(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> tuple[Client, FakeLRS]:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "PUT":
            return web.Response(status=204)
        return web.json_response({"statements": [], "more": ""})

    fake = FakeLRS(script)
    storage: TestServer = await aiohttp_server(fake.app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), [WRITER, READER])
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client, fake


def form(**fields: str) -> str:
    return urlencode(fields)


async def test_put_in_a_form_becomes_an_ordinary_put(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    body = form(
        Authorization=basic("writer", "writer-pw")["Authorization"],
        **{"X-Experience-API-Version": "1.0.3", "Content-Type": "application/json"},
        statementId=SID,
        content=json.dumps(STATEMENT),
    )
    response = await client.post("/xAPI/statements?method=PUT", data=body, headers=FORM)
    assert response.status == 204, await response.text()
    (seen,) = fake.seen
    assert seen.method == "PUT"
    assert seen.path_qs == f"/xAPI/statements?statementId={SID}"
    assert seen.headers["Content-Type"] == "application/json"
    sent = json.loads(seen.body)
    assert sent["id"] == SID
    assert sent["authority"] == WRITER["agent"]  # authenticated from the form
    assert "writer-pw" not in seen.headers.get("Authorization", "")


async def test_get_and_documents_in_a_form(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    body = form(
        Authorization=basic("reader", "reader-pw")["Authorization"],
        **{"X-Experience-API-Version": "1.0.3"},
        limit="1",
    )
    response = await client.post("/xAPI/statements?method=GET", data=body, headers=FORM)
    assert response.status == 200
    assert fake.seen[-1].method == "GET"
    assert fake.seen[-1].path_qs == "/xAPI/statements?limit=1"
    body = form(
        Authorization=basic("writer", "writer-pw")["Authorization"],
        **{"X-Experience-API-Version": "1.0.3", "Content-Type": "text/plain", "If-Match": '"abc"'},
        activityId="http://example.com/a",
        agent='{"mbox": "mailto:x@example.com"}',
        stateId="s",
        content="hello state",
    )
    await client.post("/xAPI/activities/state?method=PUT", data=body, headers=FORM)
    seen = fake.seen[-1]
    assert seen.method == "PUT"
    assert seen.body == b"hello state"
    assert seen.headers["If-Match"] == '"abc"'
    assert seen.headers["Content-Type"] == "text/plain"


@pytest.mark.parametrize(
    ("query", "fields", "status"),
    [
        ("method=PUT", {"X-Experience-API-Version": "1.0.3"}, 401),  # no credentials
        (
            "method=PUT",
            {"Authorization": "Basic d3JpdGVyOndyb25n", "X-Experience-API-Version": "1.0.3"},
            401,
        ),
        (
            "method=GET",
            {
                "Authorization": basic("writer", "writer-pw")["Authorization"],
                "X-Experience-API-Version": "1.0.3",
            },
            403,
        ),
        (
            "method=PUT",
            {
                "Authorization": basic("writer", "writer-pw")["Authorization"],
                "X-Experience-API-Version": "2.0.0",
            },
            400,
        ),  # not in 2.0
        ("method=PUT&statementId=x", {}, 400),  # parameters belong in the form
        ("method=TRACE", {}, 400),
    ],
)
async def test_bad_alternate_requests(
    gateway: tuple[Client, FakeLRS], query: str, fields: dict[str, str], status: int
) -> None:
    client, fake = gateway
    response = await client.post(f"/xAPI/statements?{query}", data=form(**fields), headers=FORM)
    assert response.status == status
    assert fake.seen == []


async def test_content_without_a_form_content_type_is_json(gateway: tuple[Client, FakeLRS]) -> None:
    """Comm 1.3: the form's `content` is application/json unless the form says otherwise."""
    client, fake = gateway
    body = form(
        Authorization=basic("writer", "writer-pw")["Authorization"],
        **{"X-Experience-API-Version": "1.0.3"},
        statementId=SID,
        content=json.dumps(STATEMENT),
    )
    response = await client.post("/xAPI/statements?method=PUT", data=body, headers=FORM)
    assert response.status == 204, await response.text()
    assert fake.seen[-1].headers["Content-Type"] == "application/json"
    body = form(
        Authorization=basic("writer", "writer-pw")["Authorization"],
        **{"X-Experience-API-Version": "1.0.3"},
        activityId="http://example.com/a",
        agent=json.dumps({"mbox": "mailto:learner@example.com"}),
        stateId="s",
        content='{"page": 3}',
    )
    await client.post("/xAPI/activities/state?method=PUT", data=body, headers=FORM)
    seen = fake.seen[-1]
    assert (seen.method, seen.body) == ("PUT", b'{"page": 3}')
    assert seen.headers["Content-Type"] == "application/json"


async def test_a_json_body_with_method_is_refused(gateway: tuple[Client, FakeLRS]) -> None:
    client, _ = gateway
    response = await client.post(
        "/xAPI/statements?method=PUT", json=STATEMENT, headers=basic("writer", "writer-pw")
    )
    assert response.status == 400


@pytest.mark.learninglocker
async def test_alternate_put_through_to_learning_locker(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    config = write_config(
        tmp_path,
        learning_locker.url,
        [WRITER, READER],
        {
            "storage": {
                "basic_username": learning_locker.username,
                "basic_password": learning_locker.password,
            }
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    sid = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d9e"
    body = form(
        Authorization=basic("writer", "writer-pw")["Authorization"],
        **{"X-Experience-API-Version": "1.0.3", "Content-Type": "application/json"},
        statementId=sid,
        content=json.dumps(STATEMENT),
    )
    response = await client.post("/xAPI/statements?method=PUT", data=body, headers=FORM)
    assert response.status == 204, await response.text()
    response = await client.get(
        f"/xAPI/statements?statementId={sid}", headers=basic("reader", "reader-pw")
    )
    assert (await response.json())["id"] == sid
