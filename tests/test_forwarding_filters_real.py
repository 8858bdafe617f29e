"""Per-target filters against real Ralphs: one target takes everything, one course X only.

Several hundred mixed statements, then voiding statements for some of course X's and
some of the others': the filtered target gets course X's statements and the voiding of
those alone (a voiding statement goes where the statement it voids went), and counts
what its filter kept from it; the unfiltered one gets everything.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from realparts.ralph import RalphServer
from support import (
    basic,
    credential,
    eventually,
    forwarding_drained,
    storage_config,
    voiding,
)
from test_forwarding_real import ralph_target_entry

from gateway.http.app import create_app

pytestmark = pytest.mark.ralph

Client = TestClient[web.Request, web.Application]
XAPI = {"X-Experience-API-Version": "1.0.3"}
LMS = {**basic("lms", "lms-password"), **XAPI}
COURSE_X = "https://course.example.org/x/"


def statement(learner: str, n: int) -> dict[str, Any]:
    """Every third is course X's: as the object, or (every sixth) as a context parent."""
    course = "x" if n % 3 == 0 else f"y{n % 5}"
    item: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": learner},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
        "object": {"id": f"https://course.example.org/{course}/page/{n}"},
    }
    if n % 6 == 0:
        item["object"] = {"id": f"https://quiz.example.org/q/{n}"}
        item["context"] = {"contextActivities": {"parent": [{"id": COURSE_X}]}}
    return item


def in_course_x(item: dict[str, Any]) -> bool:
    parents = item.get("context", {}).get("contextActivities", {}).get("parent", [])
    return item["object"]["id"].startswith(COURSE_X) or any(
        p["id"].startswith(COURSE_X) for p in parents
    )


async def ids_of(session: aiohttp.ClientSession, server: RalphServer, agent: str) -> set[str]:
    """Every statement id a Ralph holds for `agent`, page after page."""
    found: set[str] = set()
    url = (
        server.url + "statements?" + urlencode({"agent": json.dumps({"mbox": agent}), "limit": 500})
    )
    while url:
        async with session.get(url, headers=basic(server.username, server.password)) as answer:
            assert answer.status == 200, await answer.text()
            body = await answer.json()
        found |= {s["id"] for s in body["statements"]}
        more = body.get("more")
        url = server.url.split("/xAPI/")[0] + more if more else ""
    return found


async def test_a_filtered_target_gets_its_statements_and_their_voiding_only(
    ralph: RalphServer,
    ralph_target: RalphServer,
    ralph_second_target: RalphServer,
    tmp_path: Path,
    aiohttp_client: Any,
) -> None:
    config = storage_config(
        ralph,
        tmp_path,
        [credential("lms", "lms-password", ["all", "admin"])],
        data_dir="data",
        forwardings=[
            ralph_target_entry(ralph_target, "everything"),
            ralph_target_entry(
                ralph_second_target,
                "course-x",
                filter={"activity_prefix": [COURSE_X]},
            ),
        ],
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    learner = f"mailto:learner-{uuid.uuid4().hex[:10]}@example.org"
    voider = f"mailto:teacher-{uuid.uuid4().hex[:10]}@example.org"
    items = [statement(learner, n) for n in range(300)]
    for start in range(0, len(items), 50):
        answer = await client.post("/xAPI/statements", json=items[start : start + 50], headers=LMS)
        assert answer.status == 200, await answer.text()
    xs = [s for s in items if in_course_x(s)]
    others = [s for s in items if not in_course_x(s)]
    assert len(xs) == 100
    voided = xs[:5] + others[:5]
    voidings = [voiding(s["id"], voider) for s in voided]
    answer = await client.post("/xAPI/statements", json=voidings, headers=LMS)
    assert answer.status == 200, await answer.text()

    async with aiohttp.ClientSession() as session:
        await forwarding_drained(client, LMS, within=60)
        # (Ralph lists voided statements in queries too: each target holds what it got.)
        assert await ids_of(session, ralph_target, learner) == {s["id"] for s in items}
        assert await ids_of(session, ralph_target, voider) == {v["id"] for v in voidings}
        assert await ids_of(session, ralph_second_target, learner) == {s["id"] for s in xs}
        # Only the voiding of course X's statements went there: none of the others'.
        assert await ids_of(session, ralph_second_target, voider) == {v["id"] for v in voidings[:5]}

    status = await (await client.get("/admin/forwarding", headers=LMS)).json()
    assert status["targets"]["course-x"]["filtered"] == 200 + 5
    assert status["targets"]["course-x"]["delivered"] == 100 + 5
    assert status["targets"]["everything"]["filtered"] == 0

    async def counted() -> bool:  # the metrics read a snapshot refreshed every 2 s
        metrics = await (await client.get("/metrics")).text()
        filtered = {
            sample.labels["target"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "lrs_gateway_forwarding_filtered_total"
        }
        return filtered == {"everything": 0, "course-x": 205}

    await eventually(counted, within=10, what="the filtered counts in the metrics")
