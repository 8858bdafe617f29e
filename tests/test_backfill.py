"""Backfill of a new target from storage's history, against real Ralphs.

Storage holds 10,000 statements from before the target existed; the gateway starts with
the target configured (live forwarding begins) and takes a few live statements; then
`lrs-gateway forwarding backfill` runs, and at about half way both it and the gateway are
killed with SIGKILL. Run again, the backfill resumes from its cursor; in the end the
target holds every historical and live statement once, the outbox queued each historical
one exactly once (its `backfilled` and `delivered` counters say so), and the live ones
were left to live forwarding (the boundary).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from realparts.learninglocker import LearningLockerServer, run_learning_locker
from realparts.postgres import PostgresServer
from realparts.ralph import RalphServer, run_ralph
from support import (
    basic,
    credential,
    eventually,
    free_port,
    gateway_env,
    served_gateway,
    storage_config,
)
from support import write_config as write_gateway_config
from test_forwarding_real import ralph_target_entry

from gateway.forwarding.store import OutboxStore

pytestmark = pytest.mark.ralph

LMS_USERS = [credential("lms", "lms-password", ["all"])]
HISTORY = 10_000
LIVE = 40
XAPI = {"X-Experience-API-Version": "1.0.3"}


@pytest.fixture(scope="module")
def storage_lrs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    """A Ralph of this module's own: the backfill copies everything it holds."""
    with run_ralph(tmp_path_factory.mktemp("backfill-storage")) as server:
        yield server


@pytest.fixture(scope="module")
def new_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    """The analytics LRS added later: it gets history by backfill, the rest live."""
    with run_ralph(tmp_path_factory.mktemp("backfill-target")) as server:
        yield server


def statement(n: int, kind: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": f"mailto:learner{n % 97}@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
        "object": {"id": f"https://course.example.org/{kind}/{n}"},
    }


async def all_ids(session: aiohttp.ClientSession, server: RalphServer) -> list[str]:
    """Every statement id a Ralph lists, page after page, duplicates kept."""
    found: list[str] = []
    url = server.url + "statements?limit=1000"
    while url:
        async with session.get(url, headers=basic(server.username, server.password)) as answer:
            assert answer.status == 200, await answer.text()
            body = await answer.json()
        found += [s["id"] for s in body["statements"]]
        more = body.get("more")
        url = server.url.split("/xAPI/")[0] + more if more else ""
    return found


def outbox_figures(data_dir: Path, target: str) -> dict[str, Any]:
    """The backfill row and the target's counters, read from the outbox file."""
    conn = sqlite3.connect(f"{(data_dir / 'outbox.sqlite3').as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT queued, skipped, state FROM backfills WHERE target = ?", (target,)
        ).fetchone()
        counters = dict(
            conn.execute("SELECT name, value FROM counters WHERE target = ?", (target,))
        )
    except sqlite3.OperationalError:
        return {"queued": 0, "skipped": 0, "state": None, "counters": {}}
    finally:
        conn.close()
    queued, skipped, state = row if row is not None else (0, 0, None)
    return {"queued": queued, "skipped": skipped, "state": state, "counters": counters}


async def gateway_command(config: Path, *args: str) -> asyncio.subprocess.Process:
    """`lrs-gateway --config CONFIG ARGS...`, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        *args,
        env=gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def backfill_command(
    config: Path, *args: str, target: str = "analytics"
) -> asyncio.subprocess.Process:
    return await gateway_command(config, "forwarding", "backfill", "--target", target, *args)


async def backfilled(config: Path, target: str, since: str, *args: str) -> str:
    """Backfill `target` from `since` to now, then wait for the delivery; its output."""
    run = await backfill_command(
        config,
        "--since",
        since,
        "--until",
        datetime.now(UTC).isoformat(),
        "--wait",
        *args,
        target=target,
    )
    out, err = await asyncio.wait_for(run.communicate(), 120)
    assert run.returncode == 0, err.decode()
    return out.decode()


async def test_a_backfill_killed_half_way_resumes_and_each_id_arrives_once(
    storage_lrs: RalphServer, new_target: RalphServer, tmp_path: Path
) -> None:
    port = free_port()
    storage_config(
        storage_lrs,
        tmp_path,
        LMS_USERS,
        data_dir="data",
        forwardings=[ralph_target_entry(new_target, "analytics")],
        server={"port": port},
    )
    data_dir = tmp_path / "data"
    storage_auth = {**basic(storage_lrs.username, storage_lrs.password), **XAPI}
    history = [statement(n, "history") for n in range(HISTORY)]
    async with aiohttp.ClientSession() as session:
        # Before the target existed: straight into storage.
        for start in range(0, HISTORY, 1000):
            async with session.post(
                storage_lrs.url + "statements",
                json=history[start : start + 1000],
                headers=storage_auth,
            ) as answer:
                assert answer.status == 200, await answer.text()
        live = [statement(n, "live") for n in range(LIVE)]
        async with served_gateway(tmp_path, port) as served:
            for start in range(0, LIVE, 10):
                async with session.post(
                    f"{served.base}/xAPI/statements",
                    json=live[start : start + 10],
                    headers=basic("lms", "lms-password"),
                ) as answer:
                    assert answer.status == 200, await answer.text()
            run = await backfill_command(
                tmp_path / "config.yaml", "--page-size", "250", "--max-rate", "1500"
            )

            def half_way() -> bool:
                return bool(outbox_figures(data_dir, "analytics")["queued"] >= HISTORY // 2)

            # It first waits for the boundary (60 s after the gateway started) to settle.
            await eventually(half_way, within=240, what="the backfill half way")
            run.send_signal(signal.SIGKILL)
            served.proc.send_signal(signal.SIGKILL)
            await run.wait()
            await served.proc.wait()
        halfway = outbox_figures(data_dir, "analytics")
        assert HISTORY // 2 <= halfway["queued"] < HISTORY
        assert halfway["state"] == "running"

        async with served_gateway(tmp_path, port):
            again = await backfill_command(tmp_path / "config.yaml", "--wait")
            out, err = await asyncio.wait_for(again.communicate(), 300)
            assert again.returncode == 0, err.decode()
            assert "backfill done" in out.decode()
            figures = outbox_figures(data_dir, "analytics")
            assert figures["state"] == "done"
            assert figures["queued"] == HISTORY  # each historical statement queued once
            assert figures["skipped"] == LIVE  # the live ones: left to live forwarding
            assert figures["counters"]["backfilled"] == HISTORY

            async def delivered() -> bool:
                counters = outbox_figures(data_dir, "analytics")["counters"]
                return bool(counters.get("delivered", 0) >= HISTORY + LIVE)

            await eventually(delivered, within=120, what="everything delivered")
        at_target = await all_ids(session, new_target)
    assert len(at_target) == len(set(at_target))
    assert set(at_target) == {s["id"] for s in history} | {s["id"] for s in live}
    # Every queued delivery left exactly once: none was queued twice.
    assert outbox_figures(data_dir, "analytics")["counters"]["delivered"] == HISTORY + LIVE


async def test_the_backfill_refuses_what_it_cannot_do(
    storage_lrs: RalphServer, new_target: RalphServer, tmp_path: Path
) -> None:
    storage_config(
        storage_lrs,
        tmp_path,
        LMS_USERS,
        data_dir="data",
        forwardings=[ralph_target_entry(new_target, "analytics")],
    )
    # Never served: nobody knows where live forwarding began.
    run = await backfill_command(tmp_path / "config.yaml")
    _, err = await run.communicate()
    assert run.returncode == 1
    assert "live forwarding to analytics has not begun" in err.decode()
    run = await backfill_command(tmp_path / "config.yaml", "--until", "yesterday")
    _, err = await run.communicate()
    assert run.returncode == 1
    assert "not an ISO 8601 timestamp" in err.decode()
    run = await backfill_command(tmp_path / "config.yaml", "--until", "2100-01-01T00:00:00Z")
    _, err = await run.communicate()
    assert run.returncode == 1
    assert "is in the future: a backfill ends at a moment passed" in err.decode()
    unknown = await backfill_command(tmp_path / "config.yaml", target="nobody")
    _, err = await unknown.communicate()
    assert unknown.returncode == 1
    assert "no forwarding target named 'nobody'" in err.decode()
    # A backfill held by a live run (this test's process, on this host): refused at once.
    store = OutboxStore(tmp_path / "data" / "outbox.sqlite3")
    try:
        store.went_live(["analytics"])
        holder = f"{socket.gethostname()}/{os.getpid()}/test"
        store.claim_backfill("analytics", holder, None, "2020-01-01T00:00:00Z", stale_after=60.0)
    finally:
        store.close()
    # Refused before the boundary's wait (a minute, the target having just gone live).
    busy = await backfill_command(tmp_path / "config.yaml")
    _, err = await asyncio.wait_for(busy.communicate(), 20)
    assert busy.returncode == 1
    assert "another backfill of analytics is running" in err.decode()


async def test_a_backfill_goes_through_the_targets_filter_and_pseudonyms(
    storage_lrs: RalphServer, ralph_target: RalphServer, tmp_path: Path
) -> None:
    port = free_port()
    storage_config(
        storage_lrs,
        tmp_path,
        LMS_USERS,
        data_dir="data",
        forwardings=[
            ralph_target_entry(
                ralph_target,
                "course-x",
                filter={"activity_prefix": ["https://course.example.org/x/"]},
                pseudonymise={
                    "key": "a research key of at least 32 bytes, kept apart",
                    "homepage": "https://pseudonyms.example.org",
                },
            )
        ],
        server={"port": port},
    )
    since = datetime.now(UTC).isoformat()
    mine = [statement(n, "x" if n % 3 == 0 else "y") for n in range(30)]
    storage_auth = {**basic(storage_lrs.username, storage_lrs.password), **XAPI}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            storage_lrs.url + "statements", json=mine, headers=storage_auth
        ) as answer:
            assert answer.status == 200, await answer.text()
        async with served_gateway(tmp_path, port):
            await backfilled(tmp_path / "config.yaml", "course-x", since)
            status = await gateway_command(tmp_path / "config.yaml", "forwarding", "status")
            shown, _ = await status.communicate()
        assert "course-x: backfill done, 100%" in shown.decode()
        target_auth = {**basic(ralph_target.username, ralph_target.password), **XAPI}
        for item in mine:
            async with session.get(
                ralph_target.url + f"statements?statementId={item['id']}", headers=target_auth
            ) as answer:
                # Ralph answers a statementId query with a statement result (or a 404).
                body = await answer.json() if answer.status == 200 else {}
            held = body.get("statements", [body] if "id" in body else [])
            if item["object"]["id"].startswith("https://course.example.org/x/"):
                (copy,) = held
                assert copy["actor"]["account"]["homePage"] == "https://pseudonyms.example.org"
                assert item["actor"]["mbox"] not in json.dumps(copy)
            else:
                assert held == [], item
    figures = outbox_figures(tmp_path / "data", "course-x")
    assert figures["counters"]["backfilled"] == 30
    assert figures["counters"]["filtered"] == 20
    assert figures["counters"]["delivered"] == 10


@pytest.mark.postgres
async def test_a_backfill_on_the_shared_postgresql_outbox(
    storage_lrs: RalphServer,
    ralph_second_target: RalphServer,
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    """The same command with the outbox every replica shares: two replicas deliver."""
    dsn = await asyncio.to_thread(postgres.new_database)
    since = datetime.now(UTC).isoformat()
    mine = [statement(n, "pg") for n in range(300)]
    storage_auth = {**basic(storage_lrs.username, storage_lrs.password), **XAPI}
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        storage_config(
            storage_lrs,
            tmp_path / f"r{n}",
            LMS_USERS,
            data_dir="data",
            forwardings=[ralph_target_entry(ralph_second_target, "warehouse")],
            server={"port": port},
            store={"url": dsn},
        )
    async with aiohttp.ClientSession() as session:
        async with session.post(
            storage_lrs.url + "statements", json=mine, headers=storage_auth
        ) as answer:
            assert answer.status == 200, await answer.text()
        async with (
            served_gateway(tmp_path / "r0", ports[0]),
            served_gateway(tmp_path / "r1", ports[1]),
        ):
            out = await backfilled(
                tmp_path / "r0" / "config.yaml", "warehouse", since, "--page-size", "50"
            )
            assert "backfill done: 300 statements queued" in out
        at_target = set(await all_ids(session, ralph_second_target))
    assert {s["id"] for s in mine} <= at_target
    connection = await asyncpg.connect(dsn)
    try:
        counters = {
            row[0]: int(row[1])
            for row in await connection.fetch(
                "SELECT name, sum(value) FROM outbox_counters WHERE target = 'warehouse' "
                "GROUP BY name"
            )
        }
        state = await connection.fetchval(
            "SELECT state FROM outbox_backfills WHERE target = 'warehouse'"
        )
    finally:
        await connection.close()
    assert state == "done"
    assert counters["backfilled"] == 300
    assert counters["delivered"] == 300


async def test_a_tenants_target_is_backfilled_from_its_storage_into_its_outbox(
    storage_lrs: RalphServer, new_target: RalphServer, tmp_path: Path
) -> None:
    write_gateway_config(
        tmp_path,
        new_target.url,  # the default tenant's storage: not where this history is
        [credential("lms", "lms-password", ["all"])],
        {
            "data_dir": "data",
            "storage": {
                "basic_username": new_target.username,
                "basic_password": new_target.password,
            },
            "tenants": [
                {
                    "name": "physics",
                    "storage": {
                        "url": storage_lrs.url,
                        "basic_username": storage_lrs.username,
                        "basic_password": storage_lrs.password,
                    },
                    "forwardings": [ralph_target_entry(new_target, "physics-copy")],
                }
            ],
        },
    )
    since = datetime.now(UTC).isoformat()
    mine = [statement(n, "physics") for n in range(5)]
    storage_auth = {**basic(storage_lrs.username, storage_lrs.password), **XAPI}
    async with (
        aiohttp.ClientSession() as session,
        session.post(storage_lrs.url + "statements", json=mine, headers=storage_auth) as answer,
    ):
        assert answer.status == 200, await answer.text()
    until = datetime.now(UTC).isoformat()
    run = await backfill_command(
        tmp_path / "config.yaml",
        "--tenant",
        "physics",
        "--since",
        since,
        "--until",
        until,
        target="physics-copy",
    )
    _, err = await run.communicate()
    assert run.returncode == 0, err.decode()
    # Queued in the tenant's own outbox, for its worker; the default tenant's has none.
    store = OutboxStore(tmp_path / "data" / "tenants" / "physics" / "outbox.sqlite3")
    try:
        queued = {
            row[0]
            for row in store.conn.execute(
                "SELECT s.statement_id FROM deliveries d JOIN statements s ON s.seq = d.seq "
                "WHERE d.target = 'physics-copy'"
            )
        }
        backfill = store.backfill("physics-copy")
    finally:
        store.close()
    assert queued == {s["id"] for s in mine}
    assert backfill is not None
    assert backfill.state == "done"
    assert not (tmp_path / "data" / "outbox.sqlite3").exists()
    # The same range again: done already (timestamps compared as moments, not as text).
    again = await backfill_command(
        tmp_path / "config.yaml",
        "--tenant",
        "physics",
        "--since",
        since.replace("+00:00", "Z"),
        "--until",
        until,
        target="physics-copy",
    )
    out, err = await again.communicate()
    assert again.returncode == 0, err.decode()
    assert "this backfill is done already (5 statements queued)" in out.decode()
    unknown = await backfill_command(tmp_path / "config.yaml", "--tenant", "biology")
    _, err = await unknown.communicate()
    assert unknown.returncode == 1
    assert "no tenant named 'biology'" in err.decode()


@pytest.fixture(scope="module")
def ll_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LearningLockerServer]:
    """A Learning Locker as storage: it answers `attachments=true` with multipart/mixed."""
    with run_learning_locker(tmp_path_factory.mktemp("backfill-ll-storage")) as server:
        yield server


async def test_attachments_are_backfilled_from_a_multipart_answer(
    ll_storage: LearningLockerServer, learning_locker: LearningLockerServer, tmp_path: Path
) -> None:
    port = free_port()
    storage_config(
        ll_storage,
        tmp_path,
        LMS_USERS,
        data_dir="data",
        forwardings=[
            {
                "name": "archive",
                "is_active": True,
                "url": learning_locker.url + "statements",
                "basic_username": learning_locker.username,
                "basic_password": learning_locker.password,
                "max_retries": 3,
                "timeout": 5,
            }
        ],
        server={"port": port},
    )
    content = b"a certificate of completion\nsecond line\n"
    sha2 = hashlib.sha256(content).hexdigest()
    with_file = statement(1, "ll")
    with_file["attachments"] = [
        {
            "usageType": "http://id.tincanapi.com/attachment/certificate",
            "display": {"en-US": "certificate"},
            "contentType": "text/plain",
            "length": len(content),
            "sha2": sha2,
        }
    ]
    plain = statement(2, "ll")
    boundary = "backfillBOUNDARY"
    body = (
        (
            f"--{boundary}\r\nContent-Type: application/json\r\n\r\n"
            f"{json.dumps([with_file, plain])}\r\n--{boundary}\r\n"
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
            f"X-Experience-API-Hash: {sha2}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--".encode()
    )
    since = datetime.now(UTC).isoformat()
    storage_headers = {
        "Authorization": ll_storage.authorization,
        "Content-Type": f"multipart/mixed; boundary={boundary}",
        **XAPI,
    }
    target_headers = {"Authorization": learning_locker.authorization, **XAPI}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            ll_storage.url + "statements", data=body, headers=storage_headers
        ) as answer:
            assert answer.status == 200, await answer.text()
        async with served_gateway(tmp_path, port):
            out = await backfilled(tmp_path / "config.yaml", "archive", since)
            assert "2 statements queued" in out
        async with session.get(
            learning_locker.url + "statements",
            params={"statementId": with_file["id"], "attachments": "true"},
            headers=target_headers,
        ) as answer:
            assert answer.status == 200, await answer.text()
            raw = await answer.read()
        async with session.get(
            learning_locker.url + "statements",
            params={"statementId": plain["id"]},
            headers=target_headers,
        ) as answer:
            assert answer.status == 200, await answer.text()
    # The attachment's bytes, under its hash, in the target's multipart answer.
    assert f"X-Experience-API-Hash:{sha2}".encode() in raw.replace(b": ", b":")
    assert content in raw
