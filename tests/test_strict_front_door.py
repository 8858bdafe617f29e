"""The gateway as the strict part, in front of real LRSes (issues 13 and 14).

Each invalid statement class gets the gateway's own 400 (its JSON error with a request id)
and storage never receives it: asked by id afterwards, storage has no such statement. The
same holds in front of Ralph (which accepts much on its own) and Learning Locker. Also:
a submitted authority is validated, then replaced; signed statements pass verbatim with
their authority left out; gateway tokens end with their user, in front of Ralph.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry
from realparts.learninglocker import LearningLockerServer
from realparts.ralph import RalphServer
from support import (
    SIGNATURE_USAGE,
    basic,
    credential,
    eventually,
    signed_body,
    storage_config,
    write_config,
)

from gateway.http.app import create_app

Client = TestClient[web.Request, web.Application]
ADMIN = credential("admin", "admin-pw", ["all", "tokens/issue"])


def valid() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"objectType": "Agent", "mbox": "mailto:learner@example.com"},
        "verb": {
            "id": "http://adlnet.gov/expapi/verbs/completed",
            "display": {"en-US": "completed"},
        },
        "object": {"objectType": "Activity", "id": "http://example.com/course/strict"},
        "timestamp": "2026-11-30T10:00:00.000Z",
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets `value` at a dotted path (creating objects on the way)."""

    def mutate(statement: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = statement
        for name in parents:
            target = target.setdefault(name, {})
        target[last] = value

    return mutate


SUBSTATEMENT = {
    "objectType": "SubStatement",
    "actor": {"mbox": "mailto:a@example.com"},
    "verb": {"id": "http://x.example/v"},
    "object": {"id": "http://x.example/o"},
}
# One statement per class of Data-chapter rule the gateway must enforce itself.
INVALID: dict[str, Callable[[dict[str, Any]], None]] = {
    "actor with two identifiers": _set("actor.openid", "http://openid.example.org/learner"),
    "mbox without mailto": _set("actor.mbox", "learner@example.com"),
    "anonymous group without members": _set("actor", {"objectType": "Group"}),
    "verb id not an IRI": _set("verb.id", "completed"),
    "display not a language map": _set("verb.display", {"en-US": 3}),
    "bad language tag": _set("verb.display", {"en_US!": "done"}),
    "unknown objectType": _set("object.objectType", "Thing"),
    "statement ref id not a UUID": _set(
        "object", {"objectType": "StatementRef", "id": "not-a-uuid"}
    ),
    "substatement with an id": _set("object", {**SUBSTATEMENT, "id": str(uuid.uuid4())}),
    "scaled score out of range": _set("result.score", {"scaled": 1.5}),
    "raw score above max": _set("result.score", {"raw": 11, "min": 0, "max": 10}),
    "bad duration": _set("result.duration", "12 seconds"),
    "impossible timestamp": _set("timestamp", "2026-13-01T00:00:00Z"),
    "extension key not an IRI": _set("context.extensions", {"attempt": 2}),
    "revision on an agent object": lambda s: s.update(
        object={"objectType": "Agent", "mbox": "mailto:b@example.com"}, context={"revision": "2"}
    ),
    "voiding an activity": _set("verb", {"id": "http://adlnet.gov/expapi/verbs/voided"}),
    "bad interaction type": _set("object.definition", {"interactionType": "guess"}),
    "context activities not activities": _set("context.contextActivities", {"parent": "x"}),
    "registration not a UUID": _set("context.registration", "reg-1"),
    "attachment without length": _set(
        "attachments",
        [
            {
                "usageType": "http://example.com/u",
                "display": {"en-US": "a"},
                "contentType": "text/plain",
                "sha2": "0" * 64,
                "fileUrl": "http://example.com/a",
            }
        ],
    ),
    "statement version 0.9": _set("version", "0.9.5"),
    "unknown property": _set("foo", "bar"),
    "authority not a valid agent": _set("authority", {"mbox": "ceo@example.com"}),
    "authority with two identifiers": _set(
        "authority",
        {"mbox": "mailto:a@example.com", "account": {"homePage": "http://x.example", "name": "a"}},
    ),
}


async def refused_and_never_stored(
    gateway: Client, auth: dict[str, str], mutate: Callable[[dict[str, Any]], None]
) -> None:
    statement = valid()
    mutate(statement)
    response = await gateway.post("/xAPI/statements", json=statement, headers=auth)
    assert response.status == 400, await response.text()
    error = await response.json()
    assert error["error"] == "bad_request", error  # the gateway's own error body
    assert error["request_id"], error
    response = await gateway.get(f"/xAPI/statements?statementId={statement['id']}", headers=auth)
    assert response.status == 404, await response.text()  # storage never got it


async def every_invalid_class_is_refused(gateway: Client) -> None:
    """A valid statement goes through; each INVALID one is refused and never stored."""
    auth = basic("admin", "admin-pw")
    response = await gateway.post("/xAPI/statements", json=valid(), headers=auth)
    assert response.status == 200, await response.text()
    for name, mutate in INVALID.items():
        try:
            await refused_and_never_stored(gateway, auth, mutate)
        except AssertionError as failure:
            raise AssertionError(f"{name}: {failure}") from None


@pytest.mark.ralph
async def test_in_front_of_ralph_every_invalid_class_is_refused_by_the_gateway(
    ralph: RalphServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    config = write_config(
        tmp_path,
        ralph.url,
        [ADMIN],
        {"storage": {"basic_username": ralph.username, "basic_password": ralph.password}},
    )
    gateway: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    await every_invalid_class_is_refused(gateway)


@pytest.mark.learninglocker
async def test_in_front_of_learning_locker_every_invalid_class_is_refused_by_the_gateway(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    config = storage_config(learning_locker, tmp_path / "gw", [ADMIN])
    gateway: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    await every_invalid_class_is_refused(gateway)


@pytest.mark.learninglocker
async def test_learning_locker_gets_signed_statements_without_authority_verbatim(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Data 2.6: a signed statement normally has no authority; storage stamps its own."""
    config = storage_config(
        learning_locker, tmp_path / "gw", [ADMIN], xapi={"signed_statements": "verbatim"}
    )
    gateway: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    auth = basic("admin", "admin-pw")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for algorithm in ("RS256", "RS384", "RS512"):
        sent = valid()
        del sent["timestamp"]  # nothing the gateway would add: it must not add it
        response = await gateway.post(
            "/xAPI/statements",
            data=signed_body(sent, key, "sig", algorithm),
            headers={**auth, "Content-Type": "multipart/mixed; boundary=sig"},
        )
        assert response.status == 200, (algorithm, await response.text())
        response = await gateway.get(f"/xAPI/statements?statementId={sent['id']}", headers=auth)
        stored = await response.json()
        assert stored["authority"] == learning_locker.authority  # the LRS stamped its own
        assert "timestamp" in stored
        assert stored["attachments"][0]["usageType"] == SIGNATURE_USAGE


@pytest.mark.learninglocker
async def test_an_invalid_authority_is_refused_in_front_of_learning_locker(
    learning_locker: LearningLockerServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Data 2.4.9: the gateway used to replace it, so the LRS's own 400 never came."""
    for mode in ("strict", "basic"):
        config = storage_config(
            learning_locker, tmp_path / mode, [ADMIN], xapi={"validation": mode}
        )
        gateway: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        for authority in (
            {"mbox": "ceo@example.com"},
            {"objectType": "Agent"},
            {"mbox": "mailto:a@example.com", "openid": "http://x.example/a"},
        ):
            statement = dict(valid(), authority=authority)
            response = await gateway.post(
                "/xAPI/statements", json=statement, headers=basic("admin", "admin-pw")
            )
            assert response.status == 400, (mode, authority)
            assert "authority" in (await response.json())["message"]


@pytest.mark.ralph
async def test_a_token_ends_with_its_user_in_front_of_ralph(
    ralph: RalphServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Issue 13, finding 2: no self-renewal, no life after the user is removed."""
    issuer = credential(
        "issuer", "issuer-pw", ["tokens/issue", "statements/read/mine", "statements/write"]
    )
    config = write_config(
        tmp_path,
        ralph.url,
        [ADMIN, issuer],
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "auth": {
                "backends": ["basic", "token"],
                "tokens": {"secret": "a-token-signing-secret-of-32-bytes-or-more"},
            },
        },
    )
    gateway: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    response = await gateway.post(
        "/token",
        json={"scopes": ["statements/write", "statements/read/mine"]},
        headers=basic("issuer", "issuer-pw"),
    )
    assert response.status == 200, await response.text()
    bearer = {
        "Authorization": f"Bearer {(await response.json())['token']}",
        "X-Experience-API-Version": "1.0.3",
    }
    statement = valid()
    response = await gateway.post("/xAPI/statements", json=statement, headers=bearer)
    assert response.status == 200, await response.text()  # the token works at Ralph
    response = await gateway.post(
        "/token", json={"scopes": ["statements/read/mine"], "expires_in": 600}, headers=bearer
    )
    assert response.status == 403  # it cannot renew itself
    response = await gateway.post(
        "/token", json={"scopes": ["tokens/issue"]}, headers=basic("issuer", "issuer-pw")
    )
    assert response.status == 403  # nor be given the power to
    users = json.loads((tmp_path / "auth.json").read_text())
    (tmp_path / "auth.json").write_text(json.dumps([ADMIN]))  # the issuer is removed

    async def answers(status: int) -> bool:
        return (await gateway.get("/xAPI/statements", headers=bearer)).status == status

    # The file is re-read every 0.05 s (reload_interval): the token ends with the next read.
    await eventually(lambda: answers(401), 10, "the token's refusal after its user left")
    (tmp_path / "auth.json").write_text(json.dumps(users))  # back: the token works again
    await eventually(lambda: answers(200), 10, "the token working again")
    response = await gateway.get(f"/xAPI/statements?statementId={statement['id']}", headers=bearer)
    stored = await response.json()
    assert stored["authority"]["mbox"] == issuer["agent"]["mbox"]  # Ralph adds objectType


def test_corpus_is_not_empty() -> None:
    assert len(INVALID) >= 20
    for mutate in INVALID.values():  # every mutation really changes a valid statement
        statement = valid()
        before = copy.deepcopy(statement)
        mutate(statement)
        assert statement != before
