"""Forwarding rules together: three targets, several hundred mixed statements, voiding.

Storage is a real Ralph. "everything" (a real Ralph) gets every statement; "completions"
(Learning Locker) only those that follow the cmi5 profile's completed or passed
templates; "research" (a second real Ralph) every statement, each learner a pseudonym.
Voiding statements go where the statements they void went.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from realparts.learninglocker import LearningLockerServer
from realparts.ralph import RalphServer
from support import basic, credential, forwarding_drained, storage_config, voiding
from test_forwarding_filters_real import ids_of
from test_forwarding_real import ralph_one, ralph_target_entry
from test_profiles import conforming

from gateway.http.app import create_app

pytestmark = [pytest.mark.ralph, pytest.mark.learninglocker]

Client = TestClient[web.Request, web.Application]
XAPI = {"X-Experience-API-Version": "1.0.3"}
LMS = {**basic("lms", "lms-password"), **XAPI}
PROFILE = Path(__file__).parent / "data" / "cmi5_profile.jsonld"
CMI5 = "https://w3id.org/xapi/cmi5#"
KINDS = ["completed", "passed", "launched", "initialized", "terminated", "plain"]


def mixed(learner: str, n: int) -> tuple[str, dict[str, Any]]:
    """The n-th statement: one of the cmi5 kinds, or a plain one; this learner's."""
    kind = KINDS[n % len(KINDS)]
    made: dict[str, Any] = (
        {
            "actor": {"mbox": learner},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
            "object": {"id": f"https://example.org/page/{n}"},
        }
        if kind == "plain"
        else conforming(kind)
    )
    made["id"] = str(uuid.uuid4())
    made["actor"] = {"mbox": learner, "name": "Grace Hopper"}
    return kind, made


async def ll_has(session: aiohttp.ClientSession, server: LearningLockerServer, sid: str) -> bool:
    """Whether Learning Locker holds the statement (voided ones included)."""
    for parameter in ("statementId", "voidedStatementId"):
        async with session.get(
            server.url + "statements",
            params={parameter: sid},
            headers={"Authorization": server.authorization, **XAPI},
        ) as answer:
            if answer.status == 200:
                return True
            assert answer.status == 404, await answer.text()
    return False


async def test_three_targets_each_get_what_their_rules_say(
    ralph: RalphServer,
    ralph_target: RalphServer,
    ralph_second_target: RalphServer,
    learning_locker: LearningLockerServer,
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    completions = {
        "name": "completions",
        "is_active": True,
        "url": learning_locker.url + "statements",
        "basic_username": learning_locker.username,
        "basic_password": learning_locker.password,
        "max_retries": 3,
        "timeout": 10,
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
        "filter": {
            "profile": {"file": str(PROFILE), "templates": [CMI5 + "completed", CMI5 + "passed"]}
        },
    }
    research = ralph_target_entry(
        ralph_second_target,
        "research",
        pseudonymise={
            "key": "a-research-pseudonym-key-of-32-bytes+",
            "homepage": "https://p.example.org",
        },
    )
    config = storage_config(
        ralph,
        tmp_path,
        [credential("lms", "lms-password", ["all", "admin"])],
        data_dir="data",
        forwardings=[ralph_target_entry(ralph_target, "everything"), completions, research],
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    learner = f"mailto:grace-{uuid.uuid4().hex[:10]}@example.org"
    statements = [mixed(learner, n) for n in range(360)]
    for start in range(0, len(statements), 60):
        batch = [s for _, s in statements[start : start + 60]]
        answer = await client.post("/xAPI/statements", json=batch, headers=LMS)
        assert answer.status == 200, await answer.text()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind, made in statements:
        by_kind.setdefault(kind, []).append(made)
    voided = by_kind["completed"][:4] + by_kind["launched"][:4]
    voider = f"mailto:admin-{uuid.uuid4().hex[:10]}@example.org"
    voidings = [voiding(s["id"], voider) for s in voided]
    answer = await client.post("/xAPI/statements", json=voidings, headers=LMS)
    assert answer.status == 200, await answer.text()

    await forwarding_drained(client, LMS, within=90)
    every_id = {s["id"] for _, s in statements}
    taken = {s["id"] for s in by_kind["completed"] + by_kind["passed"]}
    assert len(every_id) == 360
    assert len(taken) == 120
    async with aiohttp.ClientSession() as session:
        assert await ids_of(session, ralph_target, learner) == every_id
        assert await ids_of(session, ralph_target, voider) == {v["id"] for v in voidings}
        # Learning Locker: the completions and passes, and the voiding of completions only.
        for _, made in statements:
            assert await ll_has(session, learning_locker, made["id"]) is (made["id"] in taken)
        for made_void, target in zip(voidings, voided, strict=True):
            expected = target["id"] in taken
            assert await ll_has(session, learning_locker, made_void["id"]) is expected
        # Research: everything, and nobody's identity.
        copies = [await ralph_one(session, ralph_second_target, sid) for sid in sorted(every_id)]
    assert all(copy is not None for copy in copies)
    text = json.dumps(copies)
    assert learner not in text
    assert "Grace Hopper" not in text
    assert len({c["actor"]["account"]["name"] for c in copies if c}) == 1

    status = await (await client.get("/admin/forwarding", headers=LMS)).json()
    assert status["targets"]["completions"]["filtered"] == 240 + 4  # others; launched voids
    assert status["targets"]["completions"]["delivered"] == 120 + 4
    assert status["targets"]["research"]["delivered"] == 360 + 8
    assert status["targets"]["everything"]["delivered"] == 360 + 8
