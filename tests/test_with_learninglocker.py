"""The gateway in front of Learning Locker's LRS service (a far more conformant real LRS)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry
from realparts.learninglocker import LearningLockerServer
from support import SIGNATURE_USAGE, basic, credential, signed_body, storage_config

from gateway.http.app import create_app
from gateway.xapi.multipart import boundary_of, parse

pytestmark = pytest.mark.learninglocker
Client = TestClient[web.Request, web.Application]
ADMIN = credential("admin", "admin-pw", ["all"])
# Learning Locker reads parts as UTF-8 and strips leading CR/LF/"s": keep to such content.
NOTES = "Notes — ü, 日本 and a last line\n".encode() * 20


async def start_gateway(
    ll: LearningLockerServer, tmp_path: Path, aiohttp_client: Any, **sections: Any
) -> Client:
    config = storage_config(ll, tmp_path, [ADMIN], **sections)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


@pytest.fixture
async def gateway(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> Client:
    return await start_gateway(learning_locker, tmp_path, aiohttp_client)


def statement(**extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": "mailto:learner@example.com", "objectType": "Agent"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course/ll", "objectType": "Activity"},
        **extra,
    }


async def test_statements_round_trip(gateway: Client) -> None:
    auth = basic("admin", "admin-pw")
    response = await gateway.post("/xAPI/statements", json=[statement(), statement()], headers=auth)
    assert response.status == 200, await response.text()
    first, _ = await response.json()
    response = await gateway.get(f"/xAPI/statements?statementId={first}", headers=auth)
    assert response.status == 200
    stored = await response.json()
    assert stored["id"] == first
    assert response.headers["X-Experience-API-Version"] == "1.0.3"
    assert response.headers["X-Experience-API-Consistent-Through"].endswith("Z")
    response = await gateway.get("/xAPI/statements?limit=1", headers=auth)
    page = await response.json()
    assert page["more"].startswith("/xAPI/statements?")
    response = await gateway.get(page["more"], headers=auth)  # the link works through us
    assert response.status == 200
    assert len((await response.json())["statements"]) == 1


async def test_conflicts_and_lrs_errors_pass_through(gateway: Client) -> None:
    auth = basic("admin", "admin-pw")
    sid = str(uuid.uuid4())
    response = await gateway.put(
        f"/xAPI/statements?statementId={sid}", json=statement(), headers=auth
    )
    assert response.status == 204
    response = await gateway.put(
        f"/xAPI/statements?statementId={sid}",
        json=statement(verb={"id": "http://adlnet.gov/expapi/verbs/failed"}),
        headers=auth,
    )
    assert response.status == 409  # Learning Locker's own answer
    assert sid in (await response.json())["message"]
    response = await gateway.get("/xAPI/statements?nonsense=1", headers=auth)
    assert response.status == 400  # the LRS refuses unknown parameters; we pass that on


async def test_attachments_are_stored_and_returned(gateway: Client) -> None:
    auth = basic("admin", "admin-pw")
    sha2 = hashlib.sha256(NOTES).hexdigest()
    body_statement = statement(
        attachments=[
            {
                "usageType": "http://id.example.org/attachment/notes",
                "display": {"en-US": "notes"},
                "contentType": "text/plain",
                "length": len(NOTES),
                "sha2": sha2,
            }
        ]
    )
    boundary = "gw-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode()
        + json.dumps([body_statement]).encode()
        + f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n"
        f"Content-Transfer-Encoding: binary\r\nX-Experience-API-Hash: {sha2}\r\n\r\n".encode()
        + NOTES
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = await gateway.post(
        "/xAPI/statements",
        data=body,
        headers={**auth, "Content-Type": f"multipart/mixed; boundary={boundary}"},
    )
    assert response.status == 200, await response.text()
    (sid,) = await response.json()
    response = await gateway.get(
        f"/xAPI/statements?statementId={sid}&attachments=true", headers=auth
    )
    assert response.status == 200
    answer = parse(await response.read(), boundary_of(response.headers["Content-Type"]))
    assert json.loads(answer.parts[0].body)["id"] == sid
    assert [p.body for p in answer.parts[1:]] == [NOTES]


async def test_about_and_activities(gateway: Client) -> None:
    response = await gateway.get("/xAPI/about")
    # configured 1.0.3 and 2.0.0; Learning Locker 5 speaks 1.0.3 only
    assert (await response.json())["version"] == ["1.0.3"]
    auth = basic("admin", "admin-pw")
    await gateway.post("/xAPI/statements", json=statement(), headers=auth)
    response = await gateway.get(
        "/xAPI/activities?activityId=http%3A%2F%2Fexample.com%2Fcourse%2Fll", headers=auth
    )
    assert response.status == 200
    assert (await response.json())["id"] == "http://example.com/course/ll"


async def test_signed_statements_verify_at_a_strict_lrs_when_passed_verbatim(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Learning Locker compares the JWS payload with authority and id: stamping breaks it.

    With `xapi.signed_statements: verbatim` the statement reaches it as signed and verifies;
    with the default (`stamp`) Learning Locker's own 400 reaches the client unchanged.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = basic("admin", "admin-pw")
    headers = {**auth, "Content-Type": "multipart/mixed; boundary=sig-boundary"}
    verbatim = await start_gateway(
        learning_locker,
        tmp_path / "verbatim",
        aiohttp_client,
        xapi={"signed_statements": "verbatim"},
    )
    sent = statement(id=str(uuid.uuid4()), authority=ADMIN["agent"])  # signed as the caller's
    response = await verbatim.post(
        "/xAPI/statements", headers=headers, data=signed_body(sent, key, "sig-boundary")
    )
    assert response.status == 200, await response.text()
    assert await response.json() == [sent["id"]]
    response = await verbatim.get(f"/xAPI/statements?statementId={sent['id']}", headers=auth)
    stored = await response.json()
    assert stored["authority"] == learning_locker.authority  # the LRS's own, as ever with LL
    assert stored["attachments"][0]["usageType"] == SIGNATURE_USAGE

    response = await verbatim.post(
        "/xAPI/statements",
        headers=headers,
        data=signed_body(statement(authority=ADMIN["agent"]), key, "sig-boundary"),
    )
    assert response.status == 400  # no id: the gateway's own answer, nothing sent
    assert "needs its own id" in (await response.json())["message"]

    stamping = await start_gateway(learning_locker, tmp_path / "stamp", aiohttp_client)
    response = await stamping.post(
        "/xAPI/statements",
        headers=headers,
        data=signed_body(
            statement(id=str(uuid.uuid4()), authority={"mbox": "mailto:signer@example.com"}),
            key,
            "sig-boundary",
        ),
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith("Signed statement should match")


def _smuggling_body(forged: dict[str, Any], legit: dict[str, Any]) -> bytes:
    """Issue 13's attack: an `LL` part the gateway reads as preamble, then its own `GW` part."""
    hx = hashlib.sha256(b"x").hexdigest()
    return (
        b"--LL\r\nContent-Type: application/json\r\n\r\n"
        + json.dumps([forged]).encode()
        + b"\r\n--LL\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
        + b"X-Experience-API-Hash: "
        + hx.encode()
        + b"\r\n\r\nx"
        + b"\r\n--GW\r\nContent-Type: application/json\r\n\r\n"
        + json.dumps([legit]).encode()
        + b"\r\n--GW--\r\n--LL--"
    )


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/mixed; boundary ="GW"; x-boundary=LL',  # the reported one
        "multipart/mixed; boundary=GW; boundary=LL",
        "multipart/mixed; x-boundary=LL; boundary=GW",  # well-formed: LL reads LL, we GW
        'multipart/mixed;boundary="GW"',  # well-formed and unambiguous
    ],
)
async def test_a_body_two_parsers_read_differently_never_reaches_storage(
    gateway: Client, content_type: str
) -> None:
    auth = basic("admin", "admin-pw")
    forged_id = str(uuid.uuid4())
    forged = statement(
        id=forged_id,
        authority={"mbox": "mailto:alice@example.org"},
        attachments=[
            {
                "usageType": "http://example.org/u",
                "display": {"en-US": "a"},
                "contentType": "text/plain",
                "length": 1,
                "sha2": hashlib.sha256(b"x").hexdigest(),
            }
        ],
    )
    legit = statement()
    response = await gateway.post(
        "/xAPI/statements",
        data=_smuggling_body(forged, legit),
        headers={**auth, "Content-Type": content_type},
    )
    if response.status == 200:
        # Only an unambiguous body is taken, and then storage gets what the gateway checked.
        (stored_id,) = await response.json()
        response = await gateway.get(f"/xAPI/statements?statementId={stored_id}", headers=auth)
        assert (await response.json())["actor"] == legit["actor"]
    else:
        assert response.status == 400, await response.text()
    response = await gateway.get(f"/xAPI/statements?statementId={forged_id}", headers=auth)
    assert response.status == 404  # the forged statement was never stored
