"""A pseudonymising target against a real Ralph: the research LRS gets every statement with
every learner a keyed pseudonym, a signed statement without its signature; another target
set to `signed: skip` does not get the signed one at all. Storage keeps the originals."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry
from realparts.ralph import RalphServer
from support import (
    FakeLRS,
    FakeTarget,
    basic,
    credential,
    forwarding_drained,
    signed_body,
    storage_config,
    write_config,
)
from test_forwarding_real import ralph_one, ralph_target_entry

from gateway.http.app import create_app

pytestmark = pytest.mark.ralph

Client = TestClient[web.Request, web.Application]
XAPI = {"X-Experience-API-Version": "1.0.3"}
LMS = {**basic("lms", "lms-password"), **XAPI}
KEY = "a-pseudonymisation-key-of-32-bytes-or-more"
HOME = "https://pseudonyms.example.org"


def statement(learner: str, n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"name": "Ada Lovelace", "mbox": learner},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": f"https://course.example.org/pseudo/{n}"},
        "context": {"instructor": {"mbox": "mailto:prof-zq@example.org", "name": "Prof"}},
    }


def research_targets(ralph_target: RalphServer, skipping: TestServer) -> list[dict[str, Any]]:
    return [
        ralph_target_entry(ralph_target, "research", pseudonymise={"key": KEY, "homepage": HOME}),
        {
            "name": "no-signed",
            "url": str(skipping.make_url("/xAPI/statements")),
            "is_active": True,
            "max_retries": 3,
            "timeout": 5,
            "pseudonymise": {"key": KEY, "homepage": HOME, "signed": "skip"},
        },
    ]


async def test_the_research_copy_has_a_pseudonym_for_every_agent(
    ralph: RalphServer,
    ralph_target: RalphServer,
    tmp_path: Path,
    aiohttp_client: Any,
    aiohttp_server: Any,
) -> None:
    skipping = FakeTarget()
    skipping_server: TestServer = await aiohttp_server(skipping.app())
    config = storage_config(
        ralph,
        tmp_path,
        [credential("lms", "lms-password", ["all", "admin"])],
        data_dir="data",
        forwardings=research_targets(ralph_target, skipping_server),
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    learner = f"mailto:zq-{uuid.uuid4().hex[:10]}@example.org"
    items = [statement(learner, n) for n in range(20)]
    answer = await client.post("/xAPI/statements", json=items, headers=LMS)
    assert answer.status == 200, await answer.text()
    await forwarding_drained(client, LMS)
    async with aiohttp.ClientSession() as session:
        research = [await ralph_one(session, ralph_target, s["id"]) for s in items]
        original = await ralph_one(session, ralph, items[0]["id"])
    assert original is not None
    assert original["actor"]["mbox"] == learner  # storage keeps the original
    pseudonyms = {found["actor"]["account"]["name"] for found in research if found}
    assert len(pseudonyms) == 1  # one learner, one pseudonym
    for found in research:
        assert found is not None
        text = json.dumps(found)
        assert learner not in text
        assert "Ada Lovelace" not in text
        assert "prof-zq" not in text
        assert found["actor"]["account"]["homePage"] == HOME
        assert found["context"]["instructor"]["account"]["homePage"] == HOME
        # The authority the gateway set is pseudonymised too.
        assert found["authority"]["account"]["homePage"] == HOME
    assert {s["id"] for s in skipping.stored.values()} == {s["id"] for s in items}


async def taking_multipart(request: web.Request, body: bytes) -> web.StreamResponse:
    """A storage that takes JSON and multipart statements alike (answering their ids)."""
    if request.method == "POST":
        ids = re.findall(rb'"id": ?"([0-9a-f-]{36})"', body)
        return web.json_response([ids[0].decode()], headers=XAPI)
    return web.json_response({"statements": [], "more": ""}, headers=XAPI)


async def test_a_signed_statement_loses_its_signature_or_is_skipped(
    ralph_target: RalphServer, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """Ralph takes no multipart body: storage here is a scripted LRS that does; the
    research target is the real Ralph (what it gets has no attachment left)."""
    skipping = FakeTarget()
    skipping_server: TestServer = await aiohttp_server(skipping.app())
    storage: TestServer = await aiohttp_server(FakeLRS(taking_multipart).app())
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        [credential("lms", "lms-password", ["all", "admin"])],
        {"data_dir": "data", "forwardings": research_targets(ralph_target, skipping_server)},
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    learner = f"mailto:zq-{uuid.uuid4().hex[:10]}@example.org"
    plain, signed = statement(learner, 1), statement(learner, 2)
    answer = await client.post("/xAPI/statements", json=plain, headers=LMS)
    assert answer.status == 200, await answer.text()
    boundary = "zq-boundary-1"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    answer = await client.post(
        "/xAPI/statements",
        data=signed_body(signed, key, boundary),
        headers={**LMS, "Content-Type": f'multipart/mixed; boundary="{boundary}"'},
    )
    assert answer.status == 200, await answer.text()
    await forwarding_drained(client, LMS)
    async with aiohttp.ClientSession() as session:
        copy = await ralph_one(session, ralph_target, signed["id"])
    assert copy is not None
    assert "attachments" not in copy
    assert learner not in json.dumps(copy)
    assert set(skipping.stored) == {plain["id"]}
    status = await (await client.get("/admin/forwarding", headers=LMS)).json()
    assert status["targets"]["no-signed"]["skipped_signed"] == 1
    assert status["targets"]["research"]["signature_stripped"] == 1
    assert status["targets"]["research"]["delivered"] == 2
