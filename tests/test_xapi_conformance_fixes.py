"""What broke xAPI conformance through the gateway (issue 14 section 1, issue 13 finding 5 and
its absolute-form note): each fix tried against Learning Locker where it applies, and the
gateway's own refusals against a scripted LRS that records whatever reaches it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from realparts.learninglocker import LearningLockerServer
from support import FakeLRS, basic, credential, storage_config, write_config

from gateway.errors import BadRequest
from gateway.http.app import create_app
from gateway.http.keys import CONFIG, STORAGE, STORAGE_ABOUT, VERSIONS
from gateway.xapi.multipart import boundary_of, parse, parse_answer, request_boundary
from gateway.xapi.versions import VersionPolicy

Client = TestClient[web.Request, web.Application]
ADMIN = credential("admin", "admin-pw", ["all"])
AUTH = basic("admin", "admin-pw")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def statement(**extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": "mailto:learner@example.com", "objectType": "Agent"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course/conformance", "objectType": "Activity"},
        **extra,
    }


async def ll_gateway(ll: LearningLockerServer, tmp_path: Path, aiohttp_client: Any) -> Client:
    config = storage_config(ll, tmp_path, [ADMIN])
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


async def fake_gateway(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, script: Any = None
) -> tuple[Client, FakeLRS]:
    fake = FakeLRS(script)
    storage: TestServer = await aiohttp_server(fake.app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), [ADMIN])
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client, fake


async def post_one(client: Client, sent: dict[str, Any]) -> str:
    response = await client.post("/xAPI/statements", json=sent, headers=AUTH)
    assert response.status == 200, await response.text()
    (sid,) = await response.json()
    assert isinstance(sid, str)
    return sid


async def same_without_body(client: Client, url: str, status: int) -> None:
    """HEAD answers as GET does (Comm 1.1): status and headers, no body."""
    got = await client.get(url, headers=AUTH)
    body = await got.read()
    head = await client.head(url, headers=AUTH)
    assert (head.status, got.status) == (status, status), await head.text()
    assert await head.read() == b""
    assert head.headers.get("Content-Length") == got.headers.get("Content-Length")
    assert got.headers.get("Content-Length") in (None, str(len(body)))
    if status == 200:  # an error body (and its weak ETag) holds a random errorId
        assert head.headers.get("ETag") == got.headers.get("ETag")
    assert head.headers.get("Content-Type") == got.headers.get("Content-Type")


# HEAD (Comm 1.1): was a 500 whenever storage's answer had a Content-Length.


@pytest.mark.learninglocker
async def test_head_answers_like_get_in_front_of_learning_locker(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    client = await ll_gateway(learning_locker, tmp_path, aiohttp_client)
    sid = await post_one(client, statement())
    activity = quote("http://example.com/course/conformance", safe="")
    await same_without_body(client, f"/xAPI/activities?activityId={activity}", 200)
    await same_without_body(client, f"/xAPI/statements?statementId={sid}", 200)
    await same_without_body(client, f"/xAPI/statements?statementId={uuid.uuid4()}", 404)
    await same_without_body(client, "/xAPI/statements?limit=1", 200)
    await same_without_body(client, "/xAPI/about", 200)


@pytest.mark.learninglocker
async def test_head_on_documents_in_front_of_learning_locker(
    learning_locker_profiles: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    client = await ll_gateway(learning_locker_profiles, tmp_path, aiohttp_client)
    activity = quote(f"http://lrs-gateway.example.org/activities/{uuid.uuid4()}", safe="")
    url = f"/xAPI/activities/profile?activityId={activity}&profileId=p"
    await same_without_body(client, url, 404)  # an absent document stays a 404
    response = await client.put(
        url,
        data=b'{"a":1}',
        headers={**AUTH, "Content-Type": "application/json", "If-None-Match": "*"},
    )
    assert response.status == 204
    await same_without_body(client, url, 200)
    await same_without_body(client, f"/xAPI/activities/profile?activityId={activity}", 200)


async def test_head_where_storage_has_no_head_is_answered_from_a_get(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "HEAD":
            raise web.HTTPMethodNotAllowed("HEAD", ["GET"])
        return web.json_response({"id": "http://example.com/a"}, headers={"ETag": '"e1"'})

    client, fake = await fake_gateway(tmp_path, aiohttp_server, aiohttp_client, script)
    await same_without_body(client, "/xAPI/activities?activityId=http%3A%2F%2Fexample.com%2Fa", 200)
    assert [seen.method for seen in fake.seen] == ["GET", "HEAD", "GET"]


# Alternate syntax (Comm 1.3): `content` without a form Content-Type is JSON.


@pytest.mark.learninglocker
async def test_alternate_put_without_a_form_content_type(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    client = await ll_gateway(learning_locker, tmp_path, aiohttp_client)
    sid = str(uuid.uuid4())
    body = urlencode(
        {
            "Authorization": AUTH["Authorization"],
            "X-Experience-API-Version": "1.0.3",
            "statementId": sid,
            "content": json.dumps(statement()),
        }
    )
    response = await client.post("/xAPI/statements?method=PUT", data=body, headers=FORM)
    assert response.status == 204, await response.text()
    response = await client.get(f"/xAPI/statements?statementId={sid}", headers=AUTH)
    assert (await response.json())["id"] == sid


# A single statement with attachments=true: Learning Locker's multipart answer has no CRLF
# before its closing delimiter.


@pytest.mark.learninglocker
async def test_single_statements_with_attachments_true(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    client = await ll_gateway(learning_locker, tmp_path, aiohttp_client)
    sid = await post_one(client, statement())
    response = await client.get(
        f"/xAPI/statements?statementId={sid}&attachments=true", headers=AUTH
    )
    assert response.status == 200, await response.text()
    answer = parse(await response.read(), request_boundary(response.headers["Content-Type"]))
    assert json.loads(answer.parts[0].body)["id"] == sid
    voiding = statement(
        verb={"id": "http://adlnet.gov/expapi/verbs/voided"},
        object={"objectType": "StatementRef", "id": sid},
    )
    await post_one(client, voiding)
    response = await client.get(
        f"/xAPI/statements?voidedStatementId={sid}&attachments=true", headers=AUTH
    )
    assert response.status == 200, await response.text()
    answer = parse(await response.read(), request_boundary(response.headers["Content-Type"]))
    assert json.loads(answer.parts[0].body)["id"] == sid


LL_ANSWER = (
    b"\r\n--zz\r\nContent-Type:application/json; charset=UTF-8\r\n"
    b'Content-Length:8\r\n\r\n{"id":1}--zz--'
)


def test_answers_are_read_liberally_and_client_bodies_strictly() -> None:
    with pytest.raises(BadRequest):
        parse(LL_ANSWER, "zz")  # what a client sends is still held to RFC 2046
    answer = parse_answer(LL_ANSWER, "zz")
    assert [part.body for part in answer.parts] == [b'{"id":1}']
    assert answer.serialize() == LL_ANSWER.replace(b"}--zz--", b"}\r\n--zz--")
    well_formed = b"--zz\r\nContent-Type: application/json\r\n\r\n{}\r\n--zz--\r\n"
    assert parse_answer(well_formed, "zz").serialize() == well_formed  # untouched
    with pytest.raises(BadRequest):
        parse_answer(b"--zz\r\n\r\n{}", "zz")  # never closed: still an unreadable answer
    assert boundary_of("multipart/mixed; charset=UTF-8; boundary=zz") == "zz"


# Versions: never advertise or accept one storage refuses.


@pytest.mark.learninglocker
async def test_versions_narrowed_to_what_learning_locker_speaks(
    learning_locker: LearningLockerServer,
    tmp_path: Path,
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.http.storage_about")
    client = await ll_gateway(learning_locker, tmp_path, aiohttp_client)
    response = await client.get("/xAPI/about")
    assert (await response.json())["version"] == ["1.0.3"]  # LL 5 is 1.0.3 only
    response = await client.get(
        "/xAPI/statements?limit=1", headers={**AUTH, "X-Experience-API-Version": "2.0.0"}
    )
    assert response.status == 400
    error = await response.json()
    assert error["error"] == "unsupported_version"
    assert "accepted: 1.0.3" in error["message"]
    await client.get("/xAPI/about")
    (said,) = [r.getMessage() for r in caplog.records if r.name == "gateway.http.storage_about"]
    assert "serving 1.0.3" in said
    assert "not 2.0.0" in said


@pytest.mark.learninglocker
async def test_storage_without_about_keeps_the_configured_versions(
    learning_locker_profiles: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    client = await ll_gateway(learning_locker_profiles, tmp_path, aiohttp_client)
    response = await client.get("/xAPI/about")  # this service answers 404 at /about
    assert (await response.json())["version"] == ["1.0.3", "2.0.0"]


def test_version_policy_narrows_by_major_minor() -> None:
    policy = VersionPolicy(["1.0.3", "2.0.0"])
    narrowing = policy.narrow(["1.0.0", "1.0.1", "1.0.3"])
    assert (narrowing.served, narrowing.dropped) == (("1.0.3",), ("2.0.0",))
    assert policy.check("1.0.1") == "1.0.3"
    with pytest.raises(BadRequest):
        policy.check("2.0.0")
    assert policy.narrow(["2.0.0"]).served == ("2.0.0",)
    assert policy.default == "2.0.0"
    disjoint = policy.narrow(["0.95"])
    assert disjoint.disjoint
    assert policy.versions == ("1.0.3", "2.0.0")
    assert policy.narrow(None).served == ("1.0.3", "2.0.0")


async def test_versions_follow_storage_and_each_change_is_logged_once(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    spoken: list[Any] = [["2.0.0"]]

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path.endswith("/about"):
            if spoken[0] is None:
                raise web.HTTPNotFound()
            return web.json_response({"version": spoken[0]})
        return web.json_response({"statements": [], "more": ""})

    caplog.set_level(logging.INFO, logger="gateway.http.storage_about")
    client, _ = await fake_gateway(tmp_path, aiohttp_server, aiohttp_client, script)
    app = client.app
    assert app is not None
    about = app[STORAGE_ABOUT]
    response = await client.get("/xAPI/about")
    assert (await response.json())["version"] == ["2.0.0"]
    response = await client.get("/xAPI/statements", headers=AUTH)  # a 1.0.3 request
    assert response.status == 400
    policy, storage, within = app[VERSIONS], app[STORAGE], app[CONFIG].storage.probe_timeout
    assert await about.learn(storage, policy, within)  # unchanged: no second line
    spoken[0] = None  # storage lost its /about: the configured list again
    assert await about.learn(storage, policy, within)
    response = await client.get("/xAPI/statements", headers=AUTH)
    assert response.status == 200
    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "gateway.http.storage_about"
    ]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert "not 1.0.3" in lines[0][1]


# Issue 13, finding 5: a control character in a header that came from a form.

ROUTES = [
    ("statements", "GET", {}),
    ("statements", "PUT", {"statementId": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d", "content": "{}"}),
    (
        "activities/state",
        "GET",
        {
            "activityId": "http://example.com/a",
            "stateId": "s",
            "agent": '{"mbox": "mailto:a@example.com"}',
        },
    ),
    (
        "activities/state",
        "POST",
        {
            "activityId": "http://example.com/a",
            "stateId": "s",
            "agent": '{"mbox": "mailto:a@example.com"}',
            "content": "{}",
        },
    ),
    ("activities/profile", "GET", {"activityId": "http://example.com/a", "profileId": "p"}),
    (
        "agents/profile",
        "PUT",
        {"agent": '{"mbox": "mailto:a@example.com"}', "profileId": "p", "content": "{}"},
    ),
]


@pytest.mark.parametrize(("path", "method", "fields"), ROUTES)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("If-None-Match", "x\r\nX-Injected: yes"),
        ("Content-Type", "application/json\r\nX-Injected: yes"),
        ("If-Match", '"e"\n'),
        ("Authorization", AUTH["Authorization"] + "\x00"),
        ("X-Experience-API-Version", "1.0.3\r"),
    ],
)
async def test_control_characters_in_form_headers_are_400_on_every_route(
    tmp_path: Path,
    aiohttp_server: Any,
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
    path: str,
    method: str,
    fields: dict[str, str],
    field: str,
    value: str,
) -> None:
    client, fake = await fake_gateway(tmp_path, aiohttp_server, aiohttp_client)
    form = {
        "Authorization": AUTH["Authorization"],
        "X-Experience-API-Version": "1.0.3",
        **fields,
        field: value,
    }
    response = await client.post(
        f"/xAPI/{path}?method={method}", data=urlencode(form), headers=FORM
    )
    assert response.status == 400, await response.text()
    error = await response.json()
    assert error["error"] == "bad_request"
    assert "control character" in error["message"]
    assert fake.seen == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Issue 13, "Also seen": an absolute-form target was routed on one path, forwarded on another.


async def raw_request(
    client: Client, request_line: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    lines = [
        request_line,
        "Host: other",
        "Connection: close",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in {**AUTH, **(headers or {})}.items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


AGENT = quote('{"mbox": "mailto:a@example.com"}', safe="")
STATE = f"activityId=http%3A%2F%2Fexample.com%2Fa&stateId=s&agent={AGENT}"
AGENT_PROFILE = f"agent={AGENT}&profileId=p"


@pytest.mark.parametrize(
    ("request_line", "body", "headers"),
    [
        (
            "GET http://other/xAPI/statements?statementId=5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d "
            "HTTP/1.1",
            b"",
            None,
        ),
        (f"GET http://other/xAPI/activities/state?{STATE} HTTP/1.1", b"", None),
        (
            f"PUT HTTP://other:9/xAPI/agents/profile?{AGENT_PROFILE} HTTP/1.1",
            b"{}",
            {"Content-Type": "application/json"},
        ),
        (
            "POST http://other/xAPI/statements HTTP/1.1",
            json.dumps(statement()).encode(),
            {"Content-Type": "application/json"},
        ),
        (
            "POST http://other/xAPI/statements?method=GET HTTP/1.1",
            b"limit=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
    ],
)
async def test_absolute_form_targets_are_refused(
    tmp_path: Path,
    aiohttp_server: Any,
    aiohttp_client: Any,
    request_line: str,
    body: bytes,
    headers: dict[str, str] | None,
) -> None:
    client, fake = await fake_gateway(tmp_path, aiohttp_server, aiohttp_client)
    answer = await raw_request(client, request_line, body, headers)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"origin-form" in answer
    assert fake.seen == []
    # the same request in origin-form goes through
    origin_form = request_line.replace("http://other", "").replace("HTTP://other:9", "")
    answer = await raw_request(client, origin_form, body, headers)
    assert not answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert len(fake.seen) == 1


# Section 3: a 422 (Ralph's validation answer) is not xAPI.


async def test_a_storage_422_is_the_gateways_400(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    detail = {
        "detail": [
            {
                "type": "missing",
                "loc": ["body", 0, "verb", "id"],
                "msg": "Field required",
                "input": {},
            }
        ]
    }

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response(detail, status=422)

    client, _ = await fake_gateway(tmp_path, aiohttp_server, aiohttp_client, script)
    for response in (
        await client.post("/xAPI/statements", json=statement(), headers=AUTH),
        await client.get("/xAPI/statements?limit=1", headers=AUTH),
        await client.get("/xAPI/activities?activityId=http%3A%2F%2Fexample.com%2Fa", headers=AUTH),
    ):
        assert response.status == 400
        error = await response.json()
        assert error["error"] == "bad_request"
        assert error["message"] == (
            "the storage LRS refused the request: body.0.verb.id: Field required"
        )
        assert error["request_id"]
