"""Durable fan-out against scripted targets: faults, retries, splits, dead letters, replay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import (
    FakeLRS,
    FakeTarget,
    basic,
    credential,
    eventually,
    free_port,
    refusing_target,
    write_config,
)

from gateway.forwarding.outbox import SqliteOutbox
from gateway.forwarding.transaction import OutboxTransaction, SqliteTransaction
from gateway.http.app import create_app
from gateway.http.keys import FORWARDER

Client = TestClient[web.Request, web.Application]
USERS = [
    credential("admin", "admin-pw", ["all", "admin"]),
    credential("lms", "lms-pw", ["statements/write"]),
]


def target_config(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "is_active": True,
        "url": url,
        "basic_username": f"{name}-user",
        "basic_password": f"{name}-secret",
        "max_retries": 3,
        "timeout": 1,
        "backoff_base": 0.05,
        "backoff_cap": 0.3,
        **extra,
    }


@dataclass
class Setup:
    client: Client
    storage: FakeLRS
    targets: dict[str, FakeTarget]
    tmp_path: Path


MakeSetup = Callable[..., Awaitable[Setup]]


@pytest.fixture
def make_setup(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> MakeSetup:
    async def make(
        targets: dict[str, FakeTarget],
        *,
        storage_script: Any = None,
        urls: dict[str, str] | None = None,
        **per_target: Any,
    ) -> Setup:
        storage = FakeLRS(storage_script)
        storage_server: TestServer = await aiohttp_server(storage.app())
        forwardings = []
        for name, target in targets.items():
            if urls and name in urls:
                url = urls[name]
            else:
                server: TestServer = await aiohttp_server(target.app())
                url = str(server.make_url("/xAPI/statements"))
            forwardings.append(target_config(name, url, **per_target.get(name, {})))
        config = write_config(
            tmp_path,
            str(storage_server.make_url("/xAPI/")),
            USERS,
            {"forwardings": forwardings, "data_dir": "data"},
        )
        client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        return Setup(client, storage, targets, tmp_path)

    return make


def statement(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": f"mailto:learner{n}@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": f"http://example.com/course/{n}"},
        **extra,
    }


async def post(setup: Setup, body: Any, user: str = "lms") -> list[str]:
    response = await setup.client.post(
        "/xAPI/statements", json=body, headers=basic(user, f"{user}-pw")
    )
    assert response.status == 200, await response.text()
    ids: list[str] = await response.json()
    return ids


async def status(setup: Setup) -> dict[str, Any]:
    response = await setup.client.get("/admin/forwarding", headers=basic("admin", "admin-pw"))
    assert response.status == 200
    data: dict[str, Any] = (await response.json())["targets"]
    return data


async def drained(setup: Setup, name: str) -> None:
    """Wait until target `name` owes nothing: the target stores a batch before the gateway
    has its answer, and only then is the batch acknowledged (and counted)."""

    async def empty() -> bool:
        return bool((await status(setup))[name]["backlog"] == 0)

    await eventually(empty, what=f"{name}'s backlog drained")


async def test_every_target_gets_exactly_what_storage_stored(make_setup: MakeSetup) -> None:
    setup = await make_setup({"one": FakeTarget(), "two": FakeTarget()})
    ids = await post(setup, [statement(1), statement(2)]) + await post(setup, statement(3))
    sid = "1f0f2d4c-6a9b-4e1e-9a34-5b6c7d8e9f00"
    response = await setup.client.put(
        f"/xAPI/statements?statementId={sid}", json=statement(4), headers=basic("lms", "lms-pw")
    )
    assert response.status == 200  # the fake LRS answers PUT like a POST
    ids.append(sid)
    stored = {}
    for seen in setup.storage.seen:
        body = json.loads(seen.body)
        for item in body if isinstance(body, list) else [body]:
            stored[item["id"]] = item
    for target in setup.targets.values():
        await eventually(lambda t=target: len(t.stored) == 4)  # type: ignore[misc]
        assert target.stored == stored  # same ids, same authority, same timestamps
        assert set(target.stored) == set(ids)
    assert setup.targets["one"].headers[0]["Authorization"] == (
        "Basic b25lLXVzZXI6b25lLXNlY3JldA=="
    )  # one-user:one-secret
    assert setup.targets["one"].headers[0]["X-Experience-API-Version"] == "1.0.3"
    await drained(setup, "one")
    figures = await status(setup)
    assert figures["one"]["delivered"] == 4
    assert figures["one"]["backlog"] == 0
    assert figures["one"]["oldest_age"] is None


@pytest.mark.parametrize("answer", [400, 409, 500])
async def test_what_storage_refuses_is_never_forwarded(make_setup: MakeSetup, answer: int) -> None:
    async def refuse(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"detail": "no"}, status=answer)

    target = FakeTarget()
    setup = await make_setup({"t": target}, storage_script=refuse)
    response = await setup.client.post(
        "/xAPI/statements", json=statement(1), headers=basic("lms", "lms-pw")
    )
    assert response.status == answer
    outbox = setup.client.app[FORWARDER].outbox
    # The outbox runs operations in order: once this one is done, whatever the request
    # queued is committed. Nothing was queued for the target, so it can never be sent.

    async def deliveries(tx: OutboxTransaction) -> int:
        assert isinstance(tx, SqliteTransaction)
        return int(tx.store.conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])

    queued = await outbox.call(deliveries)
    assert queued == 0
    assert target.requests == []
    assert (await status(setup))["t"]["backlog"] == 0


async def test_500_then_200_and_429_with_retry_after(make_setup: MakeSetup) -> None:
    calls = {"flaky": 0, "busy": 0}

    async def flaky(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        calls["flaky"] += 1
        return web.Response(status=500) if calls["flaky"] <= 2 else None

    async def busy(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        calls["busy"] += 1
        if calls["busy"] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return None

    setup = await make_setup({"flaky": FakeTarget(flaky), "busy": FakeTarget(busy)})
    (sid,) = await post(setup, statement(1))
    await eventually(lambda: sid in setup.targets["flaky"].stored)
    await eventually(lambda: sid in setup.targets["busy"].stored, within=4)
    busy_times = setup.targets["busy"].times
    assert busy_times[1] - busy_times[0] >= 0.95  # Retry-After honoured
    await drained(setup, "flaky")
    await drained(setup, "busy")
    figures = await status(setup)
    assert figures["flaky"]["retries"] == 2
    assert figures["flaky"]["delivered"] == 1
    assert figures["busy"]["retries"] == 1


async def test_hanging_and_connection_dropping_targets_are_retried(make_setup: MakeSetup) -> None:
    calls = {"hang": 0, "drop": 0}

    async def hang(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        calls["hang"] += 1
        if calls["hang"] == 1:
            await asyncio.sleep(3)  # past the 1 s timeout
        return None

    async def drop(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        calls["drop"] += 1
        if calls["drop"] == 1:
            assert request.transport is not None
            request.transport.close()  # mid-response: the connection just ends
            await asyncio.sleep(0.1)
        return None

    setup = await make_setup({"hang": FakeTarget(hang), "drop": FakeTarget(drop)})
    (sid,) = await post(setup, statement(1))
    await eventually(lambda: sid in setup.targets["drop"].stored)
    await eventually(lambda: sid in setup.targets["hang"].stored, within=6)
    figures = await status(setup)
    assert figures["hang"]["retries"] >= 1
    assert figures["drop"]["retries"] >= 1


async def test_one_bad_statement_in_a_batch_is_found_and_the_rest_delivered(
    make_setup: MakeSetup,
) -> None:
    bad_actor = "mailto:learner3@example.com"

    async def picky(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        if any(s["actor"]["mbox"] == bad_actor for s in batch):
            return web.json_response({"error": "learner3 is not welcome"}, status=400)
        return None

    target = FakeTarget(picky)
    setup = await make_setup({"picky": target})
    ids = await post(setup, [statement(n) for n in range(8)])
    await eventually(lambda: len(target.stored) == 7)
    assert set(target.stored) == set(ids) - {ids[3]}
    await drained(setup, "picky")
    figures = await status(setup)
    assert figures["picky"]["dead_letters"] == 1
    assert figures["picky"]["dead_lettered_total"] == 1
    assert figures["picky"]["backlog"] == 0
    assert figures["picky"]["state"] == "up"  # it answered: refusing one is not being down


async def test_a_conflicting_id_in_a_batch_does_not_cost_the_others(make_setup: MakeSetup) -> None:
    async def has_one(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        if any(s["actor"]["mbox"] == "mailto:learner1@example.com" for s in batch):
            return web.json_response({"error": "conflict"}, status=409)
        return None

    target = FakeTarget(has_one)
    setup = await make_setup({"t": target})
    ids = await post(setup, [statement(n) for n in range(4)])
    await eventually(lambda: len(target.stored) == 3)
    await drained(setup, "t")
    figures = await status(setup)
    assert figures["t"]["delivered"] == 4  # the 409 one counts: it holds that id already
    assert set(target.stored) == set(ids) - {ids[1]}


async def test_a_target_down_gets_everything_once_it_is_back(
    make_setup: MakeSetup, aiohttp_server: Any
) -> None:
    port = free_port()
    target = FakeTarget()
    setup = await make_setup(
        {"late": target},
        urls={"late": f"http://127.0.0.1:{port}/xAPI/statements"},
        late={"max_retries": 1},
    )
    ids = []
    for n in range(5):
        ids += await post(setup, statement(n))
    worker = setup.client.app[FORWARDER].workers[0]
    await eventually(lambda: not worker.up)
    figures = await status(setup)
    assert (figures["late"]["state"], figures["late"]["up"]) == ("down", False)
    assert figures["late"]["backlog"] == 5  # still owed to it, not dead letters
    assert figures["late"]["dead_letters"] == figures["late"]["dead_lettered_total"] == 0
    assert figures["late"]["last_error"]  # why: the connection error, for the operator
    server = TestServer(target.app(), port=port)
    await server.start_server()
    try:
        await eventually(lambda: set(target.stored) == set(ids), within=8)
        # The target stores a batch before its answer reaches the gateway: then it is acked.
        await eventually(lambda: worker.behind == 0 and worker.up)
        figures = await status(setup)
        assert figures["late"]["dead_letters"] == 0
        assert figures["late"]["backlog"] == 0
        assert (figures["late"]["state"], figures["late"]["down_since"]) == ("up", None)
    finally:
        await server.close()


async def test_backlog_cap_dead_letters_with_a_reason(
    make_setup: MakeSetup, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    setup = await make_setup(
        {"capped": FakeTarget()},
        urls={"capped": f"http://127.0.0.1:{port}/xAPI/statements"},
        capped={"backlog_limit": 2, "max_retries": 100},
    )
    await post(setup, [statement(n) for n in range(5)])
    await post(setup, statement(5))
    figures = (await status(setup))["capped"]
    assert figures["backlog"] == 2
    assert figures["dead_letters"] == figures["dead_lettered_total"] == 4  # counted, not lost
    forwarder = setup.client.app[FORWARDER]

    async def permanent_reasons(tx: OutboxTransaction) -> list[str]:
        assert isinstance(tx, SqliteTransaction)
        rows = tx.store.conn.execute("SELECT reason, transient FROM dead_letters")
        return [reason for (reason, transient) in rows if not transient]

    reasons = await forwarder.outbox.call(permanent_reasons)
    assert reasons == ["backlog full"] * 4  # permanent: replayed by hand, once it caught up
    full = [r for r in caplog.records if "backlog full" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in full]  # one line when it fills up


async def test_a_slow_target_does_not_slow_the_client(make_setup: MakeSetup) -> None:
    async def slow(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        await asyncio.sleep(0.8)
        return None

    setup = await make_setup({"slow": FakeTarget(slow), "fast": FakeTarget()}, slow={"timeout": 5})
    started = time.monotonic()
    for n in range(10):
        await post(setup, statement(n))
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed  # ten POSTs, while the slow target takes 0.8 s a batch
    await eventually(lambda: len(setup.targets["fast"].stored) == 10)


async def test_status_needs_admin(make_setup: MakeSetup) -> None:
    setup = await make_setup({"t": FakeTarget()})
    response = await setup.client.get("/admin/forwarding", headers=basic("lms", "lms-pw"))
    assert response.status == 403


async def test_replay_from_the_cli_requeues_dead_letters(make_setup: MakeSetup) -> None:
    target, accept = refusing_target()
    setup = await make_setup({"t": target})
    ids = await post(setup, statement(1)) + await post(setup, statement(2))

    async def dead_lettered() -> bool:
        return bool((await status(setup))["t"]["dead_letters"] == 2)

    await eventually(dead_lettered, what="both statements dead-lettered")
    accept()
    config = str(setup.tmp_path / "config.yaml")
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "--config", config, "forwarding", "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "t " in out.stdout
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            config,
            "forwarding",
            "replay",
            "--target",
            "t",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "2 dead letters re-queued" in out.stdout
    await eventually(lambda: set(target.stored) == set(ids), within=8)


async def test_replay_through_the_admin_api_requeues_dead_letters(make_setup: MakeSetup) -> None:
    target, accept = refusing_target()
    setup = await make_setup({"t": target})
    ids = await post(setup, statement(1)) + await post(setup, statement(2))

    async def dead_lettered() -> bool:
        return bool((await status(setup))["t"]["dead_letters"] == 2)

    await eventually(dead_lettered, what="both statements dead-lettered")
    admin = basic("admin", "admin-pw")
    refused = await setup.client.post("/admin/forwarding/t/replay", headers=basic("lms", "lms-pw"))
    assert refused.status == 403
    unknown = await setup.client.post("/admin/forwarding/nope/replay", headers=admin)
    assert unknown.status == 404
    assert "no forwarding target" in (await unknown.json())["message"]
    accept()
    answer = await setup.client.post("/admin/forwarding/t/replay", headers=admin)
    assert answer.status == 200
    assert await answer.json() == {"target": "t", "requeued": 2}
    await eventually(lambda: set(target.stored) == set(ids), within=8)
    again = await setup.client.post("/admin/forwarding/t/replay", headers=admin)
    assert await again.json() == {"target": "t", "requeued": 0}
    assert (await status(setup))["t"]["dead_letters"] == 0


async def test_forwarding_metrics(make_setup: MakeSetup) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async def fail(request: web.Request, batch: list[Any]) -> web.StreamResponse | None:
        return web.Response(status=503)

    setup = await make_setup(
        {"ok": FakeTarget(), "down": FakeTarget(fail)}, down={"max_retries": 1}
    )
    await post(setup, [statement(1), statement(2)])
    forwarder = setup.client.app[FORWARDER]

    def settled() -> bool:
        snap = forwarder.snapshot
        return (
            "ok" in snap
            and snap["ok"].delivered == 2
            and not snap["down"].up
            and snap["down"].retries >= 4
        )

    await eventually(settled, within=6)
    text = await (await setup.client.get("/metrics")).text()
    samples = {
        (s.name, s.labels.get("target")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("lrs_gateway_forwarding_delivered_total", "ok")] == 2
    assert samples[("lrs_gateway_forwarding_backlog", "ok")] == 0
    assert samples[("lrs_gateway_forwarding_target_up", "ok")] == 1
    assert samples[("lrs_gateway_forwarding_target_up", "down")] == 0
    assert samples[("lrs_gateway_forwarding_backlog", "down")] == 2  # owed, not given up
    assert samples[("lrs_gateway_forwarding_lag_seconds", "down")] > 0
    assert samples[("lrs_gateway_forwarding_dead_letters", "down")] == 0
    assert samples[("lrs_gateway_forwarding_dead_lettered_total", "down")] == 0
    assert samples[("lrs_gateway_forwarding_retried_total", "down")] >= 4  # probes go on
    assert samples[("lrs_gateway_forwarding_failed_total", "down")] >= 2
    assert "down-secret" not in text


async def test_a_2_0_statement_never_reaches_a_1_0_target(make_setup: MakeSetup) -> None:
    setup = await make_setup(
        {"old": FakeTarget(), "new": FakeTarget()}, new={"xapi_version": "2.0.0"}
    )
    headers = {**basic("lms", "lms-pw"), "X-Experience-API-Version": "2.0.0"}
    response = await setup.client.post("/xAPI/statements", json=statement(1), headers=headers)
    assert response.status == 200
    (modern,) = await response.json()
    (classic,) = await post(setup, statement(2))  # 1.0.3
    await eventually(lambda: set(setup.targets["new"].stored) == {modern, classic})
    await eventually(lambda: set(setup.targets["old"].stored) == {classic})
    figures = await status(setup)
    assert figures["old"]["dead_letters"] == 1
    assert figures["old"]["dead_lettered_total"] == 1


async def test_an_outbox_operation_that_waits_fails_alone(tmp_path: Path) -> None:
    """SQLite operations run in one step on the outbox thread: one that waits is a bug,
    refused with an error, and the operations around it in the same commit still land."""
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3", synchronous="normal")
    await outbox.open()
    try:

        async def waits(tx: OutboxTransaction) -> None:
            await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="waited on something"):
            await outbox.call(waits)
        seqs = await outbox.call(lambda tx: tx.write_pending([("id-1", b"{}", None)]))
        assert await outbox.call(lambda tx: tx.pending(time.time() + 60)) == [(seqs[0], "id-1")]
    finally:
        await outbox.close()
