"""Launch-scoped tokens (cmi5-style) and Rustici Engine's token request, in front of real Ralph.

An LMS credential mints a token for one launch: one learner, one AU (and its
sub-activities), one registration. The AU runs a cmi5-like sequence with it (initialized,
state read and write, learner preferences, completed, terminated), then tries to step
outside each restriction: another actor, activity or registration in a statement; another
learner's state or profile; a read that would show someone else's statements.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from realparts.ralph import RalphServer
from support import basic, credential, write_config

from gateway.http.app import create_app
from gateway.xapi.agents import agent_identity

pytestmark = pytest.mark.ralph

Client = TestClient[web.Request, web.Application]
SECRET = "a-token-signing-secret-of-32-bytes-or-more"
LMS_AGENT = {"account": {"homePage": "https://lms.example.org", "name": "lms"}}
LMS = basic("lms", "lms-pw")
XAPI = {"X-Experience-API-Version": "1.0.3"}
VERB = "http://adlnet.gov/expapi/verbs/"


@pytest.fixture
async def gateway(ralph: RalphServer, tmp_path: Path, aiohttp_client: Any) -> Client:
    config = write_config(
        tmp_path,
        ralph.url,
        [credential("lms", "lms-pw", ["all", "tokens/issue"], LMS_AGENT)],
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "auth": {"backends": ["basic", "token"], "tokens": {"secret": SECRET}},
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


def learner(name: str) -> dict[str, Any]:
    return {"account": {"homePage": "https://lms.example.org", "name": f"{name}-{uuid.uuid4()}"}}


def cmi5_statement(
    actor: dict[str, Any], verb: str, au: str, registration: str, **extra: Any
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": actor,
        "verb": {"id": VERB + verb},
        "object": {"id": au, "objectType": "Activity"},
        "context": {
            "registration": registration,
            "contextActivities": {
                "category": [{"id": "https://w3id.org/xapi/cmi5/context/categories/moveon"}]
            },
        },
        **extra,
    }


async def mint(gateway: Client, body: dict[str, Any], auth: dict[str, str] = LMS) -> Any:
    response = await gateway.post("/token", json=body, headers=auth)
    return response.status, await response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **XAPI}


async def test_a_cmi5_launch_stays_inside_its_token(gateway: Client) -> None:
    anna, boris = learner("anna"), learner("boris")
    au = f"https://course.example.org/au/{uuid.uuid4()}"
    registration = str(uuid.uuid4())
    lms = {**LMS, **XAPI}
    # The LMS writes what a launch starts with: launched, and the launch data.
    launched = cmi5_statement(anna, "launched", au, registration)
    assert (await gateway.post("/xAPI/statements", json=launched, headers=lms)).status == 200
    others = cmi5_statement(boris, "launched", au, registration)  # another learner's
    assert (await gateway.post("/xAPI/statements", json=others, headers=lms)).status == 200
    state = {"activityId": au, "agent": json.dumps(anna), "registration": registration}
    launch_data = {**state, "stateId": "LMS.LaunchData"}

    status, minted = await mint(
        gateway,
        {
            "scopes": ["statements/write", "statements/read", "state", "profile"],
            "restrict": {"actor": anna, "activity": au, "registration": registration},
            "expires_in": 900,
        },
    )
    assert status == 200, minted
    au_auth = bearer(minted["token"])

    # The AU's session. Ralph serves statements only: a document request inside the
    # restriction gets through to it (its 404), one outside is the gateway's 403 (below).
    got = await gateway.get("/xAPI/activities/state", params=launch_data, headers=au_auth)
    assert got.status == 404, await got.text()
    assert (await got.json()) == {"detail": "Not Found"}  # Ralph's own answer
    preferences = {"agent": json.dumps(anna), "profileId": "cmi5LearnerPreferences"}
    got = await gateway.get("/xAPI/agents/profile", params=preferences, headers=au_auth)
    assert got.status == 404
    sequence = [
        cmi5_statement(anna, "initialized", au, registration),
        cmi5_statement(anna, "answered", f"{au}/quiz/1", registration),  # a sub-activity
        cmi5_statement(anna, "completed", au, registration),
        cmi5_statement(anna, "terminated", au, registration),
    ]
    for item in sequence[:2]:
        response = await gateway.post("/xAPI/statements", json=item, headers=au_auth)
        assert response.status == 200, await response.text()
    response = await gateway.post("/xAPI/statements", json=sequence[2:], headers=au_auth)
    assert response.status == 200, await response.text()
    bookmark = {**state, "stateId": "bookmark"}
    response = await gateway.put(
        "/xAPI/activities/state", params=bookmark, json={"page": 3}, headers=au_auth
    )
    assert response.status == 404, await response.text()  # through to Ralph

    # Reads: only anna's statements in this registration, whatever the query asks.
    got = await gateway.get("/xAPI/statements", params={"limit": "50"}, headers=au_auth)
    assert got.status == 200, await got.text()
    seen = (await got.json())["statements"]
    assert {s["id"] for s in seen} == {launched["id"], *(s["id"] for s in sequence)}
    assert all(agent_identity(s["actor"]) == agent_identity(anna) for s in seen)
    asked = await gateway.get(
        "/xAPI/statements", params={"statementId": others["id"]}, headers=au_auth
    )
    assert asked.status == 404  # boris's, though it exists
    asked = await gateway.get(
        "/xAPI/statements", params={"statementId": launched["id"]}, headers=au_auth
    )
    assert asked.status == 200

    # Steps outside: each a 403 with a message, nothing stored.
    outside = [
        ("POST", "/xAPI/statements", {}, cmi5_statement(boris, "completed", au, registration)),
        (
            "POST",
            "/xAPI/statements",
            {},
            cmi5_statement(anna, "completed", "https://course.example.org/au/other", registration),
        ),
        (
            "POST",
            "/xAPI/statements",
            {},
            cmi5_statement(anna, "completed", f"{au}-not-a-sub-activity", registration),
        ),
        ("POST", "/xAPI/statements", {}, cmi5_statement(anna, "completed", au, str(uuid.uuid4()))),
        (
            "POST",
            "/xAPI/statements",
            {},
            [
                sequence[0] | {"id": str(uuid.uuid4())},
                cmi5_statement(boris, "passed", au, registration),
            ],
        ),
        ("GET", "/xAPI/statements", {"agent": json.dumps(boris)}, None),
        ("GET", "/xAPI/statements", {"agent": json.dumps(anna), "related_agents": "true"}, None),
        ("GET", "/xAPI/statements", {"registration": str(uuid.uuid4())}, None),
        ("GET", "/xAPI/activities/state", {**launch_data, "agent": json.dumps(boris)}, None),
        ("GET", "/xAPI/activities/state", {**launch_data, "activityId": "https://x.org/a"}, None),
        ("GET", "/xAPI/activities/state", {**launch_data, "registration": str(uuid.uuid4())}, None),
        (
            "GET",
            "/xAPI/activities/state",
            {k: v for k, v in launch_data.items() if k != "registration"},
            None,
        ),
        ("DELETE", "/xAPI/activities/state", {**state, "agent": json.dumps(boris)}, None),
        ("GET", "/xAPI/agents/profile", {**preferences, "agent": json.dumps(boris)}, None),
        (
            "GET",
            "/xAPI/activities/profile",
            {"activityId": "https://x.org/a", "profileId": "p"},
            None,
        ),
    ]
    for method, path, params, body in outside:
        response = await gateway.request(method, path, params=params, json=body, headers=au_auth)
        assert response.status == 403, (method, path, params, await response.text())
        assert "restricted" in (await response.json())["message"]
    # Nothing of the refused writes reached Ralph: anna's statements are still the same.
    got = await gateway.get(
        "/xAPI/statements", params={"agent": json.dumps(anna), "limit": "50"}, headers=lms
    )
    assert {s["id"] for s in (await got.json())["statements"]} == {
        launched["id"],
        *(s["id"] for s in sequence),
    }


async def test_bad_restrictions_are_400_and_a_wider_scope_403(gateway: Client) -> None:
    for restrict, message in [
        ({}, "restrict needs an actor, an activity or a registration"),
        ({"actor": {"objectType": "Group", "member": []}}, "an Agent, not a Group"),
        ({"actor": {"name": "no identifier"}}, "restrict.actor"),
        ({"activity": "not an IRI"}, "restrict.activity"),
        ({"registration": "nope"}, "restrict.registration"),
        ({"learner": {}}, "restrict.learner: not a restriction"),
    ]:
        status, answer = await mint(gateway, {"scopes": ["statements/write"], "restrict": restrict})
        assert status == 400, (restrict, answer)
        assert message in answer["message"]
    status, answer = await mint(
        gateway, {"scopes": ["admin"], "restrict": {"registration": str(uuid.uuid4())}}
    )
    assert status == 403


async def test_rusticis_token_request_shape_is_answered_in_kind(gateway: Client) -> None:
    course = f"https://course.example.org/{uuid.uuid4()}"
    status, answer = await mint(
        gateway,
        {
            "permissions": {"scopes": ["write-only"], "tenantName": None, "courseId": course},
            "expiry": "2099-01-01T00:00:00.000Z",
        },
    )
    assert status == 200, answer
    assert set(answer) == {"result"}
    token = bearer(answer["result"])
    anna = learner("anna")
    inside = cmi5_statement(anna, "completed", course, str(uuid.uuid4()))
    assert (await gateway.post("/xAPI/statements", json=inside, headers=token)).status == 200
    elsewhere = cmi5_statement(anna, "completed", course + "-2", str(uuid.uuid4()))
    response = await gateway.post("/xAPI/statements", json=elsewhere, headers=token)
    assert response.status == 403
    got = await gateway.get("/xAPI/statements", headers=token)
    assert got.status == 403  # write-only: no reading

    status, answer = await mint(
        gateway, {"permissions": {"scopes": ["all"], "tenantName": "eLearnersUnite"}}
    )
    assert status == 403
    assert "not in tenant 'eLearnersUnite'" in answer["message"]
    status, answer = await mint(gateway, {"permissions": {"scopes": ["all"], "courseId": 7}})
    assert status == 400
    status, answer = await mint(gateway, {"permissions": {"scopes": ["all"], "role": "x"}})
    assert status == 400
    status, answer = await mint(gateway, {"permissions": {"scopes": ["all/read"]}})
    assert status == 200, answer  # unrestricted, the Rustici way
