"""A forwarding target that is down: it stays owed its statements, alerts, and drains once back.

Retries exhausted mean the target is *down* (state, `lrs_gateway_forwarding_target_up 0`,
one WARNING), never dead letters: backlog and lag keep counting what it has not received,
so the lag alert can fire. Back, it gets each statement once (one INFO line). An outbox left
by an older version, whose transient dead letters meant the same, gives them back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import FakeLRS, FakeTarget, basic, credential, eventually, free_port, write_config

from gateway.clock import ManualClock
from gateway.failurelog import FailureLog
from gateway.forwarding.forwarder import OUTBOX_FILE
from gateway.forwarding.store import OutboxStore
from gateway.http.app import create_app
from gateway.http.keys import FORWARDER

Client = TestClient[web.Request, web.Application]
USERS = [
    credential("admin", "admin-pw", ["all", "admin"]),
    credential("lms", "lms-pw", ["statements/write"]),
]
BACKOFF_CAP = 0.2  # seconds between probes of a down target
WENT_DOWN, CAME_BACK = "target down after", "target is back after"


def target_entry(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "is_active": True,
        "url": url,
        "basic_username": "t-user",
        "basic_password": "t-secret",
        "max_retries": 2,
        "timeout": 1,
        "batch_size": 5,
        "backoff_base": 0.01,
        "backoff_cap": BACKOFF_CAP,
        **extra,
    }


MakeGateway = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_gateway(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> MakeGateway:
    """A gateway in `tmp_path` forwarding to one target "t" at `url`."""

    async def make(url: str, **extra: Any) -> Client:
        storage: TestServer = await aiohttp_server(FakeLRS().app())
        config = write_config(
            tmp_path,
            str(storage.make_url("/xAPI/")),
            USERS,
            {"forwardings": [target_entry(url, **extra)], "data_dir": "data"},
        )
        client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        return client

    return make


def statement(n: int) -> dict[str, Any]:
    return {
        "actor": {"mbox": f"mailto:learner{n}@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": f"http://example.com/course/{n}"},
    }


async def post(client: Client, statements: list[dict[str, Any]]) -> list[str]:
    response = await client.post(
        "/xAPI/statements", json=statements, headers=basic("lms", "lms-pw")
    )
    assert response.status == 200, await response.text()
    ids: list[str] = await response.json()
    return ids


async def status(client: Client) -> dict[str, Any]:
    response = await client.get("/admin/forwarding", headers=basic("admin", "admin-pw"))
    assert response.status == 200, await response.text()
    figures: dict[str, Any] = (await response.json())["targets"]["t"]
    return figures


async def metrics(client: Client) -> dict[str, float]:
    """Target "t"'s forwarding samples, parsed by prometheus_client's text parser."""
    text = await (await client.get("/metrics")).text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("lrs_gateway_forwarding_") and sample.labels.get("target") == "t"
    }


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("gateway.forwarding") and text in r.getMessage()
    ]


async def test_a_down_target_keeps_backlog_and_lag_then_gets_each_statement_once(
    make_gateway: MakeGateway, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.forwarding")
    target = FakeTarget(down=True)
    server: TestServer = await aiohttp_server(target.app())
    client = await make_gateway(str(server.make_url("/xAPI/statements")))
    forwarder = client.app[FORWARDER]
    (worker,) = forwarder.workers
    ids = []
    for first in range(0, 20, 5):
        ids += await post(client, [statement(n) for n in range(first, first + 5)])

    await eventually(lambda: not worker.up, within=8)
    probes_from = len(target.refused)
    # The slow probes go on.
    await eventually(lambda: len(target.refused) >= probes_from + 3, within=8)
    figures = await status(client)
    assert (figures["state"], figures["up"]) == ("down", False)
    assert figures["backlog"] == 20
    assert figures["dead_letters"] == figures["dead_lettered_total"] == 0
    assert "HTTP 503" in figures["last_error"]
    assert figures["down_since"] <= time.time()
    lag = figures["oldest_age"]
    await eventually(
        lambda: forwarder.snapshot["t"].backlog == 20 and not forwarder.snapshot["t"].up, within=8
    )
    samples = await metrics(client)
    assert samples["lrs_gateway_forwarding_target_up"] == 0
    assert samples["lrs_gateway_forwarding_backlog"] == 20
    assert samples["lrs_gateway_forwarding_lag_seconds"] >= lag > 0  # it grows
    assert samples["lrs_gateway_forwarding_dead_letters"] == 0
    assert samples["lrs_gateway_forwarding_dead_lettered_total"] == 0
    # Down, it is probed with the oldest batch only, every backoff_cap.
    probes = target.refused[probes_from:]
    assert all(batch == ids[:5] for _, batch in probes)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(probes)]
    assert min(gaps) >= BACKOFF_CAP * 0.9, gaps

    target.down = False
    await eventually(lambda: set(target.received) == set(ids), within=8)
    assert worker.up
    assert set(target.received.values()) == {1}  # each statement once
    figures = await status(client)
    assert (figures["state"], figures["backlog"], figures["oldest_age"]) == ("up", 0, None)
    assert figures["delivered"] == 20
    assert figures["dead_lettered_total"] == 0
    assert (await metrics(client))["lrs_gateway_forwarding_target_up"] == 1

    down, back = lines(caplog, WENT_DOWN), lines(caplog, CAME_BACK)
    assert len(down) == 1, [r.getMessage() for r in caplog.records]
    assert len(back) == 1, [r.getMessage() for r in caplog.records]
    assert down[0].levelno == logging.WARNING
    assert back[0].levelno == logging.INFO
    assert "20 statements behind" in down[0].getMessage()
    assert "HTTP 503" in down[0].getMessage()
    assert "20 statements behind" in back[0].getMessage()
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("gateway.forwarding")
    ]
    assert warnings == down  # nothing per statement, per retry or per probe


async def test_a_target_refusing_the_gateways_credential_is_down_not_dead_letters(
    make_gateway: MakeGateway, aiohttp_server: Any
) -> None:
    target = FakeTarget(down=True, refusal=401)
    server: TestServer = await aiohttp_server(target.app())
    client = await make_gateway(str(server.make_url("/xAPI/statements")))
    ids = await post(client, [statement(n) for n in range(3)])
    await eventually(lambda: not client.app[FORWARDER].workers[0].up, within=8)
    figures = await status(client)
    assert figures["backlog"] == 3
    assert figures["dead_letters"] == 0  # not split and refused one by one
    assert "refuses the gateway's credential" in figures["last_error"]
    target.down = False  # the operator fixed the target's credential
    await eventually(lambda: set(target.received) == set(ids), within=8)


async def test_a_target_down_before_a_restart_is_still_down_and_comes_back_once(
    make_gateway: MakeGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.forwarding")
    port = free_port()
    url = f"http://127.0.0.1:{port}/xAPI/statements"  # nothing listens there yet
    client = await make_gateway(url)
    ids = await post(client, [statement(n) for n in range(3)])
    await eventually(lambda: not client.app[FORWARDER].workers[0].up, within=8)
    await client.close()
    assert len(lines(caplog, WENT_DOWN)) == 1

    # The CLI reads the state from the outbox file, gateway stopped or running.
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(tmp_path / "config.yaml"),
            "forwarding",
            "status",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["t"]
    assert (shown["state"], shown["up"], shown["backlog"]) == ("down", False, 3)

    caplog.clear()
    target = FakeTarget()
    server = TestServer(target.app(), port=port)
    await server.start_server()
    try:
        client = await make_gateway(url)
        await eventually(lambda: set(target.received) == set(ids), within=8)
        assert client.app[FORWARDER].workers[0].up
        assert lines(caplog, WENT_DOWN) == []  # no new outage: the old one ended
        assert len(lines(caplog, CAME_BACK)) == 1
        assert (await status(client))["state"] == "up"
    finally:
        await server.close()


# An outbox as versions before target states wrote it: no attachments or version columns,
# a target that was down for a while left transient dead letters (counted at every probe).
OLD_SCHEMA = """
CREATE TABLE statements (seq INTEGER PRIMARY KEY AUTOINCREMENT, statement_id TEXT NOT NULL,
    body BLOB NOT NULL, state INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE deliveries (target TEXT NOT NULL, seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT,
    PRIMARY KEY (target, seq)) WITHOUT ROWID;
CREATE TABLE dead_letters (target TEXT NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL,
    transient INTEGER NOT NULL, failed_at REAL NOT NULL, PRIMARY KEY (target, seq)) WITHOUT ROWID;
CREATE TABLE counters (target TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (target, name)) WITHOUT ROWID;
"""


def old_outbox(path: Path) -> dict[str, str]:
    """Statements 1-2 transient dead letters of "t", 3 a permanent one, 4 in its backlog."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    ids = {}
    for seq in range(1, 5):
        body = dict(statement(seq), id=f"00000000-0000-4000-8000-00000000000{seq}")
        ids[body["id"]] = ["transient", "transient", "permanent", "queued"][seq - 1]
        conn.execute(
            "INSERT INTO statements VALUES (?, ?, ?, 1, ?)",
            (seq, body["id"], json.dumps(body).encode(), time.time() - 600),
        )
    conn.executemany(
        "INSERT INTO dead_letters VALUES ('t', ?, ?, ?, 0)",
        [(1, "timed out after 1 s", 1), (2, "timed out after 1 s", 1), (3, "HTTP 400: bad", 0)],
    )
    conn.execute("INSERT INTO deliveries(target, seq) VALUES ('t', 4)")
    conn.execute("INSERT INTO counters VALUES ('t', 'dead_letters', 121)")
    conn.commit()
    conn.close()
    return ids


def test_the_outbox_migration_puts_transient_dead_letters_back_in_the_backlog(
    tmp_path: Path,
) -> None:
    path = tmp_path / OUTBOX_FILE
    old_outbox(path)
    store = OutboxStore(path)
    try:
        assert store.backlog == {"t": 3}
        figures = store.stats(["t"])["t"]
        assert (figures.backlog, figures.dead_letters, figures.state) == (3, 1, "up")
        assert figures.oldest_age is not None
        assert figures.oldest_age >= 600  # the lag tells the truth
        assert [seq for (seq,) in store.conn.execute("SELECT seq FROM dead_letters")] == [3]
        # Once: a later transient row (none is written any more) is not the migration's.
        store.conn.execute("INSERT INTO dead_letters VALUES ('t', 4, 'x', 1, 0)")
    finally:
        store.close()
    store = OutboxStore(path)
    try:
        assert store.conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (2,)
    finally:
        store.close()


async def test_a_gateway_started_on_an_old_outbox_delivers_its_transient_dead_letters(
    make_gateway: MakeGateway, aiohttp_server: Any, tmp_path: Path
) -> None:
    ids = old_outbox(tmp_path / "data" / OUTBOX_FILE)
    target = FakeTarget()
    server: TestServer = await aiohttp_server(target.app())
    client = await make_gateway(str(server.make_url("/xAPI/statements")))
    owed = {i for i, kind in ids.items() if kind != "permanent"}
    await eventually(lambda: set(target.received) == owed, within=8)
    figures = await status(client)
    assert (figures["backlog"], figures["dead_letters"]) == (0, 1)  # the permanent one waits


def test_a_failing_background_loop_logs_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    failing = FailureLog(
        logging.getLogger("gateway.forwarding.test"), "forwarding to t", clock=clock
    )
    for _ in range(50):
        failing.failed(sqlite3.OperationalError("disk I/O error"))
    clock.advance(59)
    failing.failed(sqlite3.OperationalError("disk I/O error"))  # within the minute: counted
    clock.advance(1)
    failing.failed(sqlite3.OperationalError("disk I/O error"))
    assert [r.getMessage() for r in caplog.records] == [
        "forwarding to t failed (1 times since the last line): OperationalError: disk I/O error",
        "forwarding to t failed (51 times since the last line): OperationalError: disk I/O error",
    ]
