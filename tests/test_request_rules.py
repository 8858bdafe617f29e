"""Request-level xAPI rules (Comm 2.1-2.8, 3.2): query parameters and document merges."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import MultiDict
from prometheus_client import CollectorRegistry
from realparts.ralph import RalphServer
from support import XAPI, FakeLRS, basic, credential, write_config
from yarl import URL

from gateway.errors import BadRequest
from gateway.http.app import create_app
from gateway.xapi.request_rules import check_merge_document, check_query, check_repeats

Client = TestClient[web.Request, web.Application]

SID = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
OTHER = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
AGENT = json.dumps({"mbox": "mailto:learner@example.com"})
GROUP = json.dumps(
    {"objectType": "Group", "account": {"homePage": "https://lms.example.org", "name": "team-7"}}
)
ANONYMOUS = json.dumps({"objectType": "Group", "member": [{"mbox": "mailto:a@example.com"}]})
ACTIVITY = "http://example.com/course/rules"
WHEN = "2025-01-02T03:04:05.678Z"

# ---------------------------------------------------------------------------------------
# The pure module


VALID: list[tuple[str, str, dict[str, str]]] = [
    ("statements", "GET", {}),
    (
        "statements",
        "GET",
        {
            "agent": AGENT,
            "verb": "http://adlnet.gov/expapi/verbs/completed",
            "activity": ACTIVITY,
            "registration": SID,
            "related_activities": "true",
            "related_agents": "false",
            "since": WHEN,
            "until": "2025-01-03T00:00:00+02:00",
            "limit": "0",
            "format": "ids",
            "attachments": "false",
            "ascending": "true",
        },
    ),
    ("statements", "GET", {"agent": GROUP, "format": "canonical"}),
    ("statements", "GET", {"statementId": SID, "attachments": "true", "format": "exact"}),
    ("statements", "GET", {"voidedStatementId": SID.upper()}),
    ("statements", "HEAD", {"statementId": SID}),
    # the paging parameters of the LRSes behind (in the `more` links they hand out)
    ("statements", "GET", {"limit": "1", "cursor": "abc"}),
    ("statements", "GET", {"search_after": "x|y", "pit_id": "p"}),
    ("statements", "GET", {"from": OTHER}),
    ("statements", "PUT", {"statementId": SID}),
    ("statements", "POST", {}),
    ("statements", "DELETE", {"anything": "goes"}),  # no such method: the handler's 405
    ("state", "GET", {"activityId": ACTIVITY, "agent": AGENT, "stateId": "bookmark"}),
    ("state", "GET", {"activityId": ACTIVITY, "agent": AGENT, "registration": SID, "since": WHEN}),
    ("state", "HEAD", {"activityId": ACTIVITY, "agent": AGENT}),
    ("state", "PUT", {"activityId": ACTIVITY, "agent": AGENT, "stateId": "s 1"}),
    (
        "state",
        "POST",
        {"activityId": ACTIVITY, "agent": AGENT, "stateId": "s", "registration": SID},
    ),
    ("state", "DELETE", {"activityId": ACTIVITY, "agent": AGENT}),  # every state: allowed
    ("state", "DELETE", {"activityId": ACTIVITY, "agent": AGENT, "stateId": "s"}),
    ("activity_profile", "GET", {"activityId": ACTIVITY}),
    ("activity_profile", "GET", {"activityId": ACTIVITY, "since": WHEN}),
    ("activity_profile", "GET", {"activityId": ACTIVITY, "profileId": "p"}),
    ("activity_profile", "PUT", {"activityId": ACTIVITY, "profileId": "p"}),
    ("activity_profile", "DELETE", {"activityId": ACTIVITY, "profileId": "p"}),
    ("agent_profile", "GET", {"agent": AGENT, "since": "2025-01-02T03:04:05"}),
    ("agent_profile", "POST", {"agent": AGENT, "profileId": "p"}),
    ("activities", "GET", {"activityId": ACTIVITY}),
    (
        "agents",
        "GET",
        {"agent": json.dumps({"account": {"homePage": "https://lms.example.org", "name": "7"}})},
    ),
    ("about", "GET", {}),
    ("about", "HEAD", {}),
]


@pytest.mark.parametrize(("resource", "method", "query"), VALID)
def test_valid_requests_pass(resource: str, method: str, query: dict[str, str]) -> None:
    check_query(resource, method, MultiDict(query))
    check_query(resource, method, query, v2=not any(k in query for k in ("since", "until")))


INVALID: list[tuple[str, str, dict[str, str], str, str]] = [
    # (resource, method, query, the parameter named, a word of the message)
    ("statements", "GET", {"nonsense": "1"}, "nonsense", "not a parameter"),
    ("statements", "GET", {"Limit": "1"}, "Limit", "did you mean 'limit'"),
    ("statements", "GET", {"statementid": SID}, "statementid", "did you mean 'statementId'"),
    ("statements", "GET", {"mine": "true"}, "mine", "not a parameter"),  # Ralph's own
    (
        "statements",
        "GET",
        {"statementId": SID, "voidedStatementId": OTHER},
        "voidedStatementId",
        "together",
    ),
    ("statements", "GET", {"statementId": SID, "limit": "1"}, "limit", "cannot be used with"),
    ("statements", "GET", {"voidedStatementId": SID, "agent": AGENT}, "agent", "cannot be used"),
    ("statements", "GET", {"statementId": SID, "cursor": "x"}, "cursor", "cannot be used"),
    ("statements", "GET", {"statementId": "not-a-uuid"}, "statementId", "UUID"),
    ("statements", "GET", {"voidedStatementId": SID[:-1]}, "voidedStatementId", "UUID"),
    ("statements", "GET", {"registration": "{" + SID + "}"}, "registration", "UUID"),
    ("statements", "GET", {"agent": "mailto:learner@example.com"}, "agent", "JSON"),
    (
        "statements",
        "GET",
        {"agent": json.dumps({"mbox": "mailto:a@example.com", "openid": "http://a.example.com"})},
        "agent",
        "identifiers",
    ),
    ("statements", "GET", {"agent": json.dumps({"mbox": "a@example.com"})}, "agent", "mailto"),
    ("statements", "GET", {"agent": json.dumps({"name": "no identifier"})}, "agent", "exactly one"),
    ("statements", "GET", {"agent": ANONYMOUS}, "agent", "anonymous Group"),
    (
        "statements",
        "GET",
        {"agent": json.dumps({"mbox": "mailto:a@example.com", "age": 3})},
        "agent",
        "not a property",
    ),
    ("statements", "GET", {"verb": "completed"}, "verb", "IRI"),
    ("statements", "GET", {"activity": "course 1"}, "activity", "IRI"),
    ("statements", "GET", {"since": "yesterday"}, "since", "timestamp"),
    ("statements", "GET", {"until": "2025-02-30T00:00:00Z"}, "until", "timestamp"),
    ("statements", "GET", {"limit": "-1"}, "limit", "non-negative integer"),
    ("statements", "GET", {"limit": "1.5"}, "limit", "non-negative integer"),
    ("statements", "GET", {"limit": ""}, "limit", "non-negative integer"),
    ("statements", "GET", {"format": "full"}, "format", "ids, exact, canonical"),
    ("statements", "GET", {"attachments": "True"}, "attachments", "true or false"),
    ("statements", "GET", {"ascending": "1"}, "ascending", "true or false"),
    ("statements", "GET", {"related_agents": "yes"}, "related_agents", "true or false"),
    ("statements", "GET", {"related_activities": ""}, "related_activities", "true or false"),
    ("statements", "HEAD", {"format": "all"}, "format", "ids, exact, canonical"),
    ("statements", "PUT", {}, "statementId", "required"),
    ("statements", "PUT", {"statementId": "1"}, "statementId", "UUID"),
    ("statements", "PUT", {"statementId": SID, "limit": "1"}, "limit", "not a parameter of PUT"),
    ("statements", "POST", {"statementId": SID}, "statementId", "not a parameter of POST"),
    ("state", "GET", {"agent": AGENT}, "activityId", "required"),
    ("state", "GET", {"activityId": ACTIVITY}, "agent", "required"),
    ("state", "PUT", {"activityId": ACTIVITY, "agent": AGENT}, "stateId", "required"),
    ("state", "POST", {"activityId": ACTIVITY, "agent": AGENT}, "stateId", "required"),
    ("state", "PUT", {"activityId": ACTIVITY, "agent": AGENT, "stateId": ""}, "stateId", "empty"),
    (
        "state",
        "DELETE",
        {"activityId": ACTIVITY, "agent": AGENT, "stateId": ""},
        "stateId",
        "empty",
    ),
    (
        "state",
        "GET",
        {"activityId": ACTIVITY, "agent": AGENT, "stateId": "s", "since": WHEN},
        "since",
        "cannot be used with 'stateId'",
    ),
    (
        "state",
        "PUT",
        {"activityId": ACTIVITY, "agent": AGENT, "stateId": "s", "since": WHEN},
        "since",
        "not a parameter of PUT",
    ),
    (
        "state",
        "DELETE",
        {"activityId": ACTIVITY, "agent": AGENT, "since": WHEN},
        "since",
        "not a parameter of DELETE",
    ),
    ("state", "GET", {"activityId": ACTIVITY, "agent": GROUP}, "agent", "must be Agent"),
    ("state", "GET", {"activityId": ACTIVITY, "agent": "{}"}, "agent", "exactly one"),
    ("state", "GET", {"activityId": "course", "agent": AGENT}, "activityId", "IRI"),
    (
        "state",
        "GET",
        {"activityId": ACTIVITY, "agent": AGENT, "registration": "r"},
        "registration",
        "UUID",
    ),
    (
        "state",
        "GET",
        {"activityId": ACTIVITY, "agent": AGENT, "since": "2025"},
        "since",
        "timestamp",
    ),
    (
        "state",
        "GET",
        {"activityId": ACTIVITY, "agent": AGENT, "stateid": "s"},
        "stateid",
        "did you mean 'stateId'",
    ),
    (
        "state",
        "GET",
        {"activityId": ACTIVITY, "agent": AGENT, "profileId": "p"},
        "profileId",
        "not a parameter of activities/state",
    ),
    ("activity_profile", "GET", {}, "activityId", "required"),
    ("activity_profile", "DELETE", {"activityId": ACTIVITY}, "profileId", "required"),
    (
        "activity_profile",
        "GET",
        {"activityId": ACTIVITY, "profileId": "p", "since": WHEN},
        "since",
        "cannot be used with 'profileId'",
    ),
    (
        "activity_profile",
        "GET",
        {"activityId": ACTIVITY, "agent": AGENT},
        "agent",
        "not a parameter",
    ),
    ("activity_profile", "PUT", {"activityId": ACTIVITY, "profileId": ""}, "profileId", "empty"),
    ("agent_profile", "GET", {}, "agent", "required"),
    ("agent_profile", "PUT", {"agent": AGENT}, "profileId", "required"),
    ("agent_profile", "GET", {"agent": GROUP}, "agent", "must be Agent"),
    (
        "agent_profile",
        "GET",
        {"agent": AGENT, "activityId": ACTIVITY},
        "activityId",
        "not a parameter",
    ),
    ("activities", "GET", {}, "activityId", "required"),
    ("activities", "GET", {"activityId": "x"}, "activityId", "IRI"),
    ("activities", "GET", {"activityId": ACTIVITY, "since": WHEN}, "since", "not a parameter"),
    ("agents", "GET", {}, "agent", "required"),
    ("agents", "GET", {"agent": GROUP}, "agent", "must be Agent"),
    ("about", "GET", {"version": "1.0.3"}, "version", "not a parameter of about"),
]


@pytest.mark.parametrize(("resource", "method", "query", "name", "word"), INVALID)
def test_invalid_requests_are_refused_naming_the_parameter(
    resource: str, method: str, query: dict[str, str], name: str, word: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        check_query(resource, method, MultiDict(query))
    assert repr(name) in caught.value.message
    assert word in caught.value.message


def test_timestamps_need_a_zone_in_xapi_2() -> None:
    query = {"since": "2025-01-02T03:04:05"}
    check_query("statements", "GET", query)
    with pytest.raises(BadRequest, match="time zone"):
        check_query("statements", "GET", query, v2=True)
    check_query("statements", "GET", {"since": WHEN}, v2=True)


def test_a_repeated_parameter_is_refused() -> None:
    for query in (
        MultiDict([("limit", "1"), ("limit", "2")]),
        MultiDict([("statementId", SID), ("statementId", OTHER)]),
    ):
        with pytest.raises(BadRequest, match="more than once"):
            check_repeats(query)
        with pytest.raises(BadRequest, match="more than once"):
            check_query("statements", "GET", query)
    check_repeats(MultiDict([("limit", "1"), ("format", "ids")]))


def test_values_are_never_echoed() -> None:
    secret = json.dumps({"mbox": "mailto:private.person@example.com", "openid": "x:y"})
    with pytest.raises(BadRequest) as caught:
        check_query("statements", "GET", {"agent": secret})
    assert "private.person" not in caught.value.message


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"x": "bash", "z": "faz"}'),
        ("application/json", b"{}"),
    ],
)
def test_a_merge_takes_a_json_object(content_type: str, body: bytes) -> None:
    check_merge_document(content_type, body)


@pytest.mark.parametrize(
    ("content_type", "body", "word"),
    [
        ("text/plain", b'{"x": 1}', "Content-Type"),
        ("application/octet-stream", b'{"x": 1}', "Content-Type"),
        ("application/json", b"[1, 2]", "not an object"),
        ("application/json", b'"text"', "not an object"),
        ("application/json", b"", "not valid JSON"),
        ("application/json", b"{'x': 1}", "not valid JSON"),
        ("application/json", b'{"x": 1', "not valid JSON"),
    ],
)
def test_a_merge_of_anything_else_is_refused(content_type: str, body: bytes, word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        check_merge_document(content_type, body)


# ---------------------------------------------------------------------------------------
# Through the gateway, in front of a scripted fake LRS

ALL = credential("alice", "alice-pw", ["all"])
READER = credential("reader", "reader-pw", ["statements/read"])
STATE = credential("stater", "stater-pw", ["state"])


async def _gateway(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, **sections: Any
) -> tuple[Client, FakeLRS]:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path.endswith("/statements") and request.method == "GET":
            return web.json_response({"statements": [], "more": "/xAPI/statements?cursor=c2"})
        return web.Response(status=204)

    fake = FakeLRS(script)
    storage: TestServer = await aiohttp_server(fake.app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), [ALL, READER, STATE], sections)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client, fake


@pytest.fixture
async def gateway(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> tuple[Client, FakeLRS]:
    return await _gateway(tmp_path, aiohttp_server, aiohttp_client)


def q(**params: str) -> str:
    return "?" + urlencode(params, quote_via=quote)


STATE_QUERY = q(activityId=ACTIVITY, agent=AGENT, stateId="bookmark")
REFUSED: list[tuple[str, str, dict[str, str], bytes | None, str]] = [
    # (method, path and query, extra headers, body, the parameter the error names)
    ("GET", "/xAPI/statements?limit=1&limit=2", {}, None, "'limit'"),
    ("GET", "/xAPI/statements?Limit=1", {}, None, "'Limit'"),
    ("GET", "/xAPI/statements?limit=1&page=2", {}, None, "'page'"),
    ("GET", f"/xAPI/statements?statementId={SID}&limit=1", {}, None, "'limit'"),
    (
        "GET",
        f"/xAPI/statements?statementId={SID}&voidedStatementId={OTHER}",
        {},
        None,
        "'voidedStatementId'",
    ),
    ("HEAD", "/xAPI/statements?verb=completed", {}, None, ""),
    ("GET", "/xAPI/statements" + q(agent=ANONYMOUS), {}, None, "'agent'"),
    ("GET", "/xAPI/statements?since=2025-13-01T00:00:00Z", {}, None, "'since'"),
    (
        "GET",
        "/xAPI/statements?since=2025-01-01T00:00:00",
        {"X-Experience-API-Version": "2.0.0"},
        None,
        "'since'",
    ),
    (
        "PUT",
        "/xAPI/statements",
        {"Content-Type": "application/json"},
        json.dumps(
            {
                "actor": {"mbox": "mailto:a@example.com"},
                "verb": {"id": "http://v.example"},
                "object": {"id": ACTIVITY},
            }
        ).encode(),
        "'statementId'",
    ),
    (
        "POST",
        "/xAPI/statements?statementId=" + SID,
        {"Content-Type": "application/json"},
        json.dumps(
            {
                "actor": {"mbox": "mailto:a@example.com"},
                "verb": {"id": "http://v.example"},
                "object": {"id": ACTIVITY},
            }
        ).encode(),
        "'statementId'",
    ),
    ("GET", "/xAPI/activities/state" + q(activityId=ACTIVITY), {}, None, "'agent'"),
    (
        "PUT",
        "/xAPI/activities/state" + q(activityId=ACTIVITY, agent=AGENT),
        {"Content-Type": "application/json"},
        b"{}",
        "'stateId'",
    ),
    ("DELETE", "/xAPI/activities/state" + q(agent=AGENT), {}, None, "'activityId'"),
    (
        "GET",
        "/xAPI/activities/state" + q(activityId=ACTIVITY, agent=AGENT, stateId="s", since=WHEN),
        {},
        None,
        "'since'",
    ),
    ("GET", "/xAPI/agents/profile" + q(agent=GROUP), {}, None, "'agent'"),
    ("GET", "/xAPI/agents/profile" + q(agent=AGENT, since="soon"), {}, None, "'since'"),
    ("DELETE", "/xAPI/activities/profile" + q(activityId=ACTIVITY), {}, None, "'profileId'"),
    ("GET", "/xAPI/activities", {}, None, "'activityId'"),
    ("GET", "/xAPI/agents" + q(agent="{"), {}, None, "'agent'"),
    ("GET", "/xAPI/about?x=1", {}, None, "'x'"),
    (
        "POST",
        "/xAPI/activities/state" + STATE_QUERY,
        {"Content-Type": "text/plain"},
        b'{"x": 1}',
        "Content-Type",
    ),
    (
        "POST",
        "/xAPI/activities/state" + STATE_QUERY,
        {"Content-Type": "application/json"},
        b"[1]",
        "not an object",
    ),
    (
        "POST",
        "/xAPI/activities/profile" + q(activityId=ACTIVITY, profileId="p"),
        {"Content-Type": "application/json"},
        b"{oops",
        "not valid JSON",
    ),
    (
        "POST",
        "/xAPI/agents/profile" + q(agent=AGENT, profileId="p"),
        {},
        b'{"x": 1}',
        "Content-Type",
    ),
]


@pytest.mark.parametrize(("method", "target", "headers", "body", "named"), REFUSED)
async def test_refused_requests_never_reach_storage(
    gateway: tuple[Client, FakeLRS],
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
    named: str,
) -> None:
    client, fake = gateway
    response = await client.request(
        method, target, data=body, headers={**basic("alice", "alice-pw"), **headers}
    )
    assert response.status == 400
    if method != "HEAD":
        error = await response.json()
        assert error["error"] == "bad_request"
        assert named in error["message"]
    assert response.headers["X-Experience-API-Version"]
    assert fake.seen == []


async def test_auth_and_scope_answers_come_first(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    response = await client.get("/xAPI/statements?Limit=x", headers=XAPI)
    assert response.status == 401
    response = await client.get("/xAPI/statements?Limit=x", headers=basic("alice", "nope"))
    assert response.status == 401
    response = await client.put(
        "/xAPI/activities/state?nonsense=1", data=b"x", headers=basic("reader", "reader-pw")
    )
    assert response.status == 403
    response = await client.get(
        "/xAPI/statements?limit=1",
        headers=basic("alice", "alice-pw") | {"X-Experience-API-Version": "0.95"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "unsupported_version"
    assert fake.seen == []


async def test_valid_requests_reach_storage_as_sent(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    auth = basic("alice", "alice-pw")
    queries = [
        "/xAPI/statements"
        + q(
            agent=AGENT,
            verb="http://adlnet.gov/expapi/verbs/completed",
            since=WHEN,
            limit="10",
            ascending="true",
            format="ids",
        ),
        f"/xAPI/statements?statementId={SID}&attachments=false&format=exact",
        "/xAPI/activities/state" + q(activityId=ACTIVITY, agent=AGENT, since=WHEN),
        "/xAPI/activities/profile" + q(activityId=ACTIVITY),
        "/xAPI/agents" + q(agent=AGENT),
        "/xAPI/activities" + q(activityId=ACTIVITY),
    ]
    for target in queries:
        response = await client.get(target, headers=auth)
        # (the fake LRS has no statement by id: a 404 that came from storage)
        assert response.status in (200, 204, 404), (target, await response.text())
        assert URL(fake.seen[-1].path_qs) == URL(target)
    response = await client.delete(
        "/xAPI/activities/state" + q(activityId=ACTIVITY, agent=AGENT), headers=auth
    )
    assert response.status == 204
    assert fake.seen[-1].method == "DELETE"


async def test_a_more_link_with_the_lrs_cursor_still_works(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    auth = basic("alice", "alice-pw")
    response = await client.get("/xAPI/statements?limit=1", headers=auth)
    more = (await response.json())["more"]
    assert more == "/xAPI/statements?cursor=c2"
    response = await client.get(more, headers=auth)
    assert response.status == 200
    assert fake.seen[-1].path_qs == more


async def test_a_merge_sends_exactly_the_checked_body(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    auth = basic("stater", "stater-pw")
    document = b'{"x": "bash", "z": "faz"}'
    target = "/xAPI/activities/state" + STATE_QUERY
    response = await client.post(
        target, data=document, headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status == 204, await response.text()
    assert fake.seen[-1].body == document
    assert fake.seen[-1].headers["Content-Length"] == str(len(document))
    # compressed: storage gets what was checked, decoded, without the stale encoding
    response = await client.post(
        target,
        data=gzip.compress(document),
        headers={
            **auth,
            "Content-Type": "application/json; charset=utf-8",
            "Content-Encoding": "gzip",
        },
    )
    assert response.status == 204, await response.text()
    assert fake.seen[-1].body == document
    assert "Content-Encoding" not in fake.seen[-1].headers

    async def chunks() -> Any:
        yield document[:5]
        yield document[5:]

    response = await client.post(
        target, data=chunks(), headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status == 204, await response.text()
    assert fake.seen[-1].body == document
    # a PUT stores any document, JSON or not
    response = await client.put(
        target, data=b"\x00binary", headers={**auth, "Content-Type": "application/octet-stream"}
    )
    assert response.status == 204
    assert fake.seen[-1].body == b"\x00binary"
    assert len(fake.seen) == 4


async def test_a_merge_past_the_size_limit_is_413(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client, fake = await _gateway(
        tmp_path, aiohttp_server, aiohttp_client, server={"max_body_size": 1024}
    )
    document = json.dumps({"x": "y" * 2000}).encode()

    async def chunks() -> Any:
        yield document

    response = await client.post(
        "/xAPI/activities/state" + STATE_QUERY,
        data=chunks(),
        headers={**basic("alice", "alice-pw"), "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert fake.seen == []


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def alternate(**fields: str) -> str:
    auth = basic("alice", "alice-pw")
    return urlencode(
        {"Authorization": auth["Authorization"], "X-Experience-API-Version": "1.0.3", **fields}
    )


async def test_alternate_syntax_follows_the_rules_of_the_request_it_becomes(
    gateway: tuple[Client, FakeLRS],
) -> None:
    client, fake = gateway
    for target, form in [
        ("/xAPI/statements?method=GET", alternate(limit="many")),
        ("/xAPI/statements?method=GET", alternate(statementId=SID, verb=ACTIVITY)),
        ("/xAPI/statements?method=PUT", alternate(content="{}")),
        ("/xAPI/activities/state?method=GET", alternate(activityId=ACTIVITY)),
        (
            "/xAPI/activities/state?method=POST",
            alternate(
                activityId=ACTIVITY,
                agent=AGENT,
                stateId="s",
                content="[1]",
                **{"Content-Type": "application/json"},
            ),
        ),
        (
            "/xAPI/activities/state?method=POST",
            alternate(
                activityId=ACTIVITY,
                agent=AGENT,
                stateId="s",
                content='{"x": 1}',
                **{"Content-Type": "text/plain"},
            ),
        ),
    ]:
        response = await client.post(target, data=form, headers=FORM)
        assert response.status == 400, (target, form)
    assert fake.seen == []
    response = await client.post(
        "/xAPI/activities/state?method=POST",
        headers=FORM,
        data=alternate(
            activityId=ACTIVITY,
            agent=AGENT,
            stateId="s",
            content='{"x": 1}',
            **{"Content-Type": "application/json"},
        ),
    )
    assert response.status == 204, await response.text()
    (seen,) = fake.seen
    assert seen.method == "POST"
    assert seen.body == b'{"x": 1}'


async def test_preflights_and_extensions_are_not_checked(gateway: tuple[Client, FakeLRS]) -> None:
    client, fake = gateway
    response = await client.options("/xAPI/statements?anything=1")
    assert response.status == 204
    response = await client.get(
        "/xAPI/extensions/report?whatever=1&whatever=2", headers=basic("alice", "alice-pw")
    )
    assert response.status == 204
    assert [seen.method for seen in fake.seen] == ["OPTIONS", "GET"]


async def test_basic_validation_keeps_only_the_safety_rules(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client, fake = await _gateway(
        tmp_path, aiohttp_server, aiohttp_client, xapi={"validation": "basic"}
    )
    auth = basic("alice", "alice-pw")
    response = await client.get("/xAPI/statements?Limit=1&verb=x", headers=auth)
    assert response.status == 200
    response = await client.post(
        "/xAPI/activities/state?stateId=s",
        data=b"[1]",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert response.status == 204
    assert fake.seen[-1].body == b"[1]"
    assert len(fake.seen) == 2
    response = await client.get("/xAPI/statements?limit=1&limit=2", headers=auth)
    assert response.status == 400
    assert len(fake.seen) == 2


# ---------------------------------------------------------------------------------------
# In front of a real Ralph


@pytest.fixture
async def ralph_gateway(ralph: RalphServer, tmp_path: Path, aiohttp_client: Any) -> Client:
    config = write_config(
        tmp_path,
        ralph.url,
        [ALL],
        {"storage": {"basic_username": ralph.username, "basic_password": ralph.password}},
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


@pytest.mark.ralph
async def test_in_front_of_ralph_the_gateway_refuses_and_ralph_is_unchanged(
    ralph_gateway: Client,
) -> None:
    auth = basic("alice", "alice-pw")
    actor = {"mbox": f"mailto:rules-{uuid.uuid4().hex[:8]}@example.com"}
    by_actor = "/xAPI/statements" + q(agent=json.dumps(actor))
    written = {
        "actor": actor,
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": ACTIVITY},
    }
    response = await ralph_gateway.post("/xAPI/statements", json=written, headers=auth)
    assert response.status == 200, await response.text()
    (kept,) = await response.json()
    refused = [
        ("POST", "/xAPI/statements?verb=x", dict(written, id=str(uuid.uuid4()))),
        ("PUT", "/xAPI/statements", dict(written, id=str(uuid.uuid4()))),
        ("PUT", "/xAPI/statements?statementid=" + SID, dict(written, id=SID)),
        ("GET", f"/xAPI/statements?statementId={kept}&limit=1", None),
        ("GET", "/xAPI/statements?verb=completed", None),
        ("GET", "/xAPI/statements" + q(agent=json.dumps({"name": "nobody"})), None),
        ("GET", "/xAPI/statements?since=last-week", None),
        ("GET", "/xAPI/statements?limit=1&limit=2", None),
    ]
    for method, target, body in refused:
        response = await ralph_gateway.request(method, target, json=body, headers=auth)
        assert response.status == 400, (method, target, await response.text())
        error = await response.json()
        # the gateway's own error document, not Ralph's (which says "detail")
        assert set(error) == {"error", "message", "request_id"}, error
    response = await ralph_gateway.get(by_actor, headers=auth)
    assert response.status == 200
    assert [s["id"] for s in (await response.json())["statements"]] == [kept]


@pytest.mark.ralph
async def test_in_front_of_ralph_valid_queries_still_work(ralph_gateway: Client) -> None:
    auth = basic("alice", "alice-pw")
    actor = {"mbox": f"mailto:rules-{uuid.uuid4().hex[:8]}@example.com"}
    for _ in range(3):
        response = await ralph_gateway.post(
            "/xAPI/statements",
            headers=auth,
            json={
                "actor": actor,
                "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
                "object": {"id": ACTIVITY},
            },
        )
        assert response.status == 200, await response.text()
    # (Ralph's fs backend answers nothing to verb or activity filters: not used here)
    target = "/xAPI/statements" + q(
        agent=json.dumps(actor),
        since="2020-01-01T00:00:00Z",
        limit="2",
        ascending="true",
        format="exact",
    )
    seen: list[str] = []
    while target:
        response = await ralph_gateway.get(target, headers=auth)
        assert response.status == 200, await response.text()
        page = await response.json()
        seen += [s["id"] for s in page["statements"]]
        target = page["more"]  # Ralph's search_after and pit_id come back through us
    assert len(seen) == 3
    response = await ralph_gateway.get(
        f"/xAPI/statements?statementId={seen[0]}&format=ids", headers=auth
    )
    assert response.status == 200, await response.text()
