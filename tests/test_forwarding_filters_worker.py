"""Filters applied as statements are sent: the resolver's path and voiding statements.

Storage is scripted (fault injection: it can be made to fail the voided-statement
lookup); the target is a FakeTarget that records what it gets.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import FakeLRS, FakeTarget, credential, eventually, storing_script, write_config

from gateway.clock import SYSTEM_CLOCK, Clock, ManualClock
from gateway.forwarding.forwarder import Forwarder
from gateway.http.app import create_app
from gateway.http.keys import FORWARDER

Client = TestClient[web.Request, web.Application]
COURSE = "https://course.example.org/x/"


def statement(activity: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": "mailto:learner@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
        "object": {"id": activity},
    }


def voiding(target: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": "mailto:teacher@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
        "object": {"objectType": "StatementRef", "id": target["id"]},
    }


async def gateway(
    tmp_path: Path,
    aiohttp_server: Any,
    aiohttp_client: Any,
    storage: FakeLRS,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[Client, FakeTarget]:
    target = FakeTarget()
    storage_server: TestServer = await aiohttp_server(storage.app())
    target_server: TestServer = await aiohttp_server(target.app())
    config = write_config(
        tmp_path,
        str(storage_server.make_url("/xAPI/")),
        [credential("lms", "lms-password", ["all", "admin"])],
        {
            "data_dir": "data",
            "forwardings": [
                {
                    "name": "course-x",
                    "url": str(target_server.make_url("/xAPI/statements")),
                    "is_active": True,
                    "max_retries": 3,
                    "timeout": 5,
                    "filter": {"activity_prefix": [COURSE]},
                }
            ],
        },
    )
    client: Client = await aiohttp_client(
        create_app(config, registry=CollectorRegistry(), clock=clock)
    )
    return client, target


async def queue_unjudged(forwarder: Forwarder, items: list[dict[str, Any]]) -> None:
    """As the resolver queues: accepted without the statements (nothing judged yet)."""
    seqs = await forwarder.record_pending(
        [(s["id"], json.dumps(s).encode(), None) for s in items], "1.0.3"
    )
    forwarder.settled(seqs)
    await forwarder.accepted(seqs)


async def test_statements_queued_unjudged_are_filtered_as_they_are_sent(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    stored: dict[str, Any] = {}
    client, target = await gateway(
        tmp_path, aiohttp_server, aiohttp_client, FakeLRS(storing_script(stored))
    )
    forwarder = client.app[FORWARDER]
    mine, other = statement(COURSE + "1"), statement("https://course.example.org/y/1")
    await queue_unjudged(forwarder, [mine, other])

    async def judged() -> bool:
        status = (await forwarder.status())["course-x"]
        return status.backlog == 0 and status.filtered == 1

    await eventually(judged, within=10, what="both statements judged")
    assert set(target.stored) == {mine["id"]}


async def test_a_voiding_statement_waits_while_storage_cannot_say_what_it_voided(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """The voided statement is not in the batch: storage is asked. While storage fails,
    the voiding statement is neither sent nor dropped; once it answers, it is judged."""
    stored: dict[str, Any] = {}
    remember = storing_script(stored)
    failing, asked = True, 0

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        nonlocal asked
        if "voidedStatementId" in request.query:
            asked += 1
        if failing and "voidedStatementId" in request.query:
            return web.json_response({"message": "down"}, status=503)
        return await remember(request, body)

    clock = ManualClock()  # the worker's pause after a failed lookup passes when told
    client, target = await gateway(tmp_path, aiohttp_server, aiohttp_client, FakeLRS(script), clock)
    forwarder = client.app[FORWARDER]
    mine, other = statement(COURSE + "2"), statement("https://course.example.org/y/2")
    stored[mine["id"]], stored[other["id"]] = mine, other
    await queue_unjudged(forwarder, [voiding(mine), voiding(other)])
    await eventually(lambda: asked > 0, within=10, what="storage asked")
    status = (await forwarder.status())["course-x"]
    assert (status.backlog, status.filtered, target.stored) == (2, 0, {})
    failing = False

    async def judged() -> bool:
        clock.advance(1.0)  # the worker's pause after a failed lookup passes, a second a look
        status = (await forwarder.status())["course-x"]
        return status.backlog == 0

    await eventually(judged, within=5, what="the voiding statements judged")
    sent = list(target.stored.values())
    assert [s["object"]["id"] for s in sent] == [mine["id"]]
    assert (await forwarder.status())["course-x"].filtered == 1
