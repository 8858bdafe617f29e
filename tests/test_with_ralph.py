"""The gateway in front of a real Ralph LRS: what a user of the core gets, end to end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from realparts.ralph import RalphServer
from support import basic, credential, write_config

from gateway.http.app import create_app
from gateway.xapi.agents import agent_identity

pytestmark = pytest.mark.ralph

ADMIN = credential("admin", "admin-pw", ["all"])
READER = credential("reader", "reader-pw", ["statements/read"])
# Ralph lowercases mbox domains when it stores an authority; read/mine must still match.
ANNA = credential(
    "anna",
    "anna-pw",
    ["statements/read/mine", "statements/write"],
    {"mbox": "mailto:Anna@Example.ORG"},
)
BORIS = credential(
    "boris",
    "boris-pw",
    ["statements/read/mine", "statements/write"],
    {"account": {"homePage": "https://lms.example.org", "name": "boris"}},
)

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def gateway(ralph: RalphServer, tmp_path: Path, aiohttp_client: Any) -> Client:
    config = write_config(
        tmp_path,
        ralph.url,
        [ADMIN, READER, ANNA, BORIS],
        {"storage": {"basic_username": ralph.username, "basic_password": ralph.password}},
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


def statement(actor: str, **extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": f"mailto:{actor}@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course/ralph"},
        **extra,
    }


def same_agent(a: Any, b: Any) -> bool:
    return agent_identity(a) == agent_identity(b)


async def test_post_then_get_carries_the_callers_authority(gateway: Client) -> None:
    forged = {"mbox": "mailto:ceo@example.com"}
    response = await gateway.post(
        "/xAPI/statements",
        json=[statement("p1", authority=forged)],
        headers=basic("anna", "anna-pw"),
    )
    assert response.status == 200, await response.text()
    (sid,) = await response.json()
    response = await gateway.get(
        f"/xAPI/statements?statementId={sid}", headers=basic("admin", "admin-pw")
    )
    assert response.status == 200
    stored = await response.json()  # the Statement, though Ralph answers a StatementResult
    assert stored["id"] == sid
    assert same_agent(stored["authority"], ANNA["agent"])
    assert response.headers["X-Experience-API-Version"] == "1.0.3"


async def test_put_with_statement_id_and_conflicting_duplicate(gateway: Client) -> None:
    sid = str(uuid.uuid4())
    auth = basic("admin", "admin-pw")
    response = await gateway.put(
        f"/xAPI/statements?statementId={sid}", json=statement("p2"), headers=auth
    )
    assert response.status == 204, await response.text()
    response = await gateway.get(f"/xAPI/statements?statementId={sid}", headers=auth)
    assert (await response.json())["actor"]["mbox"] == "mailto:p2@example.com"
    response = await gateway.post(
        "/xAPI/statements", json=statement("someone-else", id=sid), headers=auth
    )
    assert response.status == 409  # Ralph's own answer, passed through


async def test_read_mine_callers_never_see_each_other(gateway: Client) -> None:
    actor = f"shared-{uuid.uuid4().hex[:8]}"  # both write about the same learner
    posted: dict[str, set[str]] = {"anna": set(), "boris": set()}
    for user in ("anna", "boris", "anna", "boris", "anna"):
        response = await gateway.post(
            "/xAPI/statements", json=statement(actor), headers=basic(user, f"{user}-pw")
        )
        assert response.status == 200
        posted[user].update(await response.json())

    async def read_all(user: str) -> set[str]:
        seen: set[str] = set()
        url = (
            "/xAPI/statements?limit=1&agent="
            f"%7B%22mbox%22%3A%22mailto%3A{actor}%40example.com%22%7D"
        )
        for _ in range(50):
            response = await gateway.get(url, headers=basic(user, f"{user}-pw"))
            assert response.status == 200, await response.text()
            page = await response.json()
            assert len(page["statements"]) <= 1
            seen.update(s["id"] for s in page["statements"])
            if not page["more"]:
                return seen
            assert page["more"].startswith("/xAPI/statements")
            url = page["more"]
        pytest.fail("paging did not end")

    assert await read_all("anna") == posted["anna"]
    assert await read_all("boris") == posted["boris"]
    # a single statement of someone else's is "not found", not forbidden
    other = next(iter(posted["boris"]))
    response = await gateway.get(
        f"/xAPI/statements?statementId={other}", headers=basic("anna", "anna-pw")
    )
    assert response.status == 404
    response = await gateway.get(
        f"/xAPI/statements?statementId={other}", headers=basic("reader", "reader-pw")
    )
    assert response.status == 200


async def test_statement_id_queries_answer_a_statement_for_every_caller(gateway: Client) -> None:
    """Ralph answers `statementId` with a StatementResult; xAPI says the Statement, or 404."""
    response = await gateway.post(
        "/xAPI/statements", json=statement("p4"), headers=basic("anna", "anna-pw")
    )
    (sid,) = await response.json()
    for user in ("admin", "reader", "anna"):
        response = await gateway.get(
            f"/xAPI/statements?statementId={sid}", headers=basic(user, f"{user}-pw")
        )
        assert response.status == 200, user
        stored = await response.json()
        assert "statements" not in stored
        assert stored["id"] == sid
        response = await gateway.get(
            f"/xAPI/statements?statementId={uuid.uuid4()}", headers=basic(user, f"{user}-pw")
        )
        assert response.status == 404, user
        assert (await response.json())["error"] == "not_found"


async def test_ralphs_422_is_a_400_with_the_gateways_error(gateway: Client) -> None:
    """Valid xAPI that Ralph refuses with 422: an identified Group as the `agent` filter, an
    Agent as a statement's object. xAPI has no 422: clients get 400, Ralph's words kept."""
    group = quote(json.dumps({"objectType": "Group", "mbox": "mailto:team@example.com"}))
    auth = basic("admin", "admin-pw")
    response = await gateway.get(f"/xAPI/statements?agent={group}", headers=auth)
    error = await response.json()
    assert (response.status, error["error"]) == (400, "bad_request"), error
    assert set(error) == {"error", "message", "request_id"}
    assert error["message"].startswith("the storage LRS refused the request: query.agent.")
    response = await gateway.post(
        "/xAPI/statements",
        headers=auth,
        json=statement("p5", object={"objectType": "Agent", "mbox": "mailto:peer@example.com"}),
    )
    error = await response.json()
    assert (response.status, error["error"]) == (400, "bad_request"), error
    assert error["message"] == (
        "the storage LRS refused the request: body.object.id: Field required"
    )


async def test_errors_in_front_of_ralph(gateway: Client) -> None:
    response = await gateway.post(
        "/xAPI/statements", json=statement("p3"), headers=basic("admin", "bad-password")
    )
    assert response.status == 401
    response = await gateway.post(
        "/xAPI/statements", json=statement("p3"), headers=basic("reader", "reader-pw")
    )
    assert response.status == 403
    response = await gateway.post(
        "/xAPI/statements", data=b"{nope", headers=basic("admin", "admin-pw")
    )
    assert response.status == 400
    response = await gateway.get(
        "/xAPI/statements",
        headers={
            k: v for k, v in basic("admin", "admin-pw").items() if k != "X-Experience-API-Version"
        },
    )
    assert response.status == 400


async def test_gateway_endpoints_with_ralph(gateway: Client) -> None:
    response = await gateway.get("/__heartbeat__")
    assert response.status == 200, await response.text()
    response = await gateway.get("/whoami", headers=basic("boris", "boris-pw"))
    assert (await response.json())["agent"] == BORIS["agent"]
    response = await gateway.head("/xAPI/statements?limit=1", headers=basic("admin", "admin-pw"))
    assert response.status == 200  # Ralph itself answers HEAD with 405


MakeClient = Callable[[], Awaitable[Client]]


async def test_a_claimed_signature_cannot_smuggle_someone_elses_authority(
    ralph: RalphServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Issue 13, finding 3: verbatim applies to real JWS parts only, authority the caller's.

    Ralph keeps the authority the gateway's `all` credential sends, so a Group authority
    naming BORIS as a member would make the statement BORIS's own for read/mine.
    """
    config = write_config(
        tmp_path,
        ralph.url,
        [ANNA, BORIS],
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "xapi": {"signed_statements": "verbatim"},
        },
    )
    gateway: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    signature = {
        "usageType": "http://adlnet.gov/expapi/attachments/signature",
        "display": {"en-US": "signature"},
        "contentType": "application/octet-stream",
        "length": 10,
        "sha2": "0" * 64,
        "fileUrl": "http://example.com/sig",
    }
    anna = basic("anna", "anna-pw")
    for refused in (
        {"objectType": "Group", "mbox": "mailto:Anna@Example.ORG", "member": [BORIS["agent"]]},
        {"mbox": "mailto:Anna@Example.ORG", **BORIS["agent"]},
    ):
        response = await gateway.post(
            "/xAPI/statements",
            headers=anna,
            json=statement("p9", id=str(uuid.uuid4()), authority=refused, attachments=[signature]),
        )
        assert response.status == 400, await response.text()  # not a valid authority
    # A valid (3-legged OAuth) authority with BORIS in it, and only a claimed signature:
    claimed = statement(
        "p9",
        id=str(uuid.uuid4()),
        attachments=[signature],
        authority={"objectType": "Group", "member": [ANNA["agent"], BORIS["agent"]]},
    )
    response = await gateway.post("/xAPI/statements", json=claimed, headers=anna)
    assert response.status == 200, await response.text()
    response = await gateway.get(
        f"/xAPI/statements?statementId={claimed['id']}", headers=basic("boris", "boris-pw")
    )
    assert response.status == 404  # not BORIS's: the gateway stamped ANNA's own agent
    response = await gateway.get(f"/xAPI/statements?statementId={claimed['id']}", headers=anna)
    assert same_agent((await response.json())["authority"], ANNA["agent"])
