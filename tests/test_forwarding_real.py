"""Durable fan-out with real parts: a second Ralph as a target, kill -9 under load, the resolver.

- A second, independent Ralph (`ralph_target`) receives what the storage Ralph stored: same
  id, same authority, same timestamp; a resent identical statement counts as delivered.
- The gateway runs as a subprocess, is SIGKILLed while clients post, and is started again:
  every acknowledged statement ends up in storage and in every target, none twice in Ralph,
  and what storage holds of the unanswered ones reaches the targets too.
- The pending resolver (scripted storage): a write whose answer was lost is forwarded if
  storage holds it, and never if storage does not.
- A Ralph target that is down (nothing listens on its port) then up: the gateway marks it
  down, keeps its statements in the backlog (no dead letters) and delivers each once it is
  back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from realparts.process import free_port
from realparts.ralph import RalphServer
from support import XAPI, FakeLRS, basic, credential, eventually, write_config

from gateway.forwarding.forwarder import OUTBOX_FILE
from gateway.forwarding.transaction import OutboxTransaction
from gateway.http.app import create_app
from gateway.http.keys import FORWARDER
from gateway.xapi.agents import agent_identity

Client = TestClient[web.Request, web.Application]

LMS_AGENT = {"mbox": "mailto:lms@lrs-gateway.example.org"}
USERS = [
    credential("admin", "admin-pw", ["all", "admin"]),
    credential("lms", "lms-pw", ["statements/write"], LMS_AGENT),
]
LMS = basic("lms", "lms-pw")
ADMIN = basic("admin", "admin-pw")
COMPLETED = "http://adlnet.gov/expapi/verbs/completed"
RALPH_PAGE = 100  # Ralph's largest page
HOP_TIMEOUT = aiohttp.ClientTimeout(total=10)


# -- helpers ------------------------------------------------------------------------------------


def unique_mbox(kind: str) -> str:
    """A learner no other test writes about (Ralph filters by agent, not by verb)."""
    return f"mailto:{kind}-{uuid.uuid4().hex[:12]}@example.com"


def statement(mbox: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "actor": {"mbox": mbox},
        "verb": {"id": COMPLETED},
        "object": {"id": f"http://example.com/forwarding/{n}"},
        **extra,
    }


def same_agent(a: Any, b: Any) -> bool:
    return agent_identity(a) is not None and agent_identity(a) == agent_identity(b)


def ralph_target_entry(server: RalphServer, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "is_active": True,
        "url": server.url + "statements",
        "basic_username": server.username,
        "basic_password": server.password,
        "max_retries": 3,
        "timeout": 5,
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
        **extra,
    }


def deadline_loop(within: float, what: str) -> Callable[[], None]:
    """For `while` loops with a deadline: a check to call each round, raising once past it."""
    deadline = time.monotonic() + within

    def check() -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within:.0f} s")

    return check


async def ralph_one(
    session: aiohttp.ClientSession, server: RalphServer, statement_id: str
) -> dict[str, Any] | None:
    """The statement with that id, asked of Ralph directly; None when Ralph has none."""
    async with session.get(
        server.url + "statements",
        params={"statementId": statement_id},
        headers=basic(server.username, server.password),
        timeout=HOP_TIMEOUT,
    ) as response:
        if response.status == 404:
            return None
        assert response.status == 200, await response.text()
        data: Any = await response.json()
    if "statements" in data:  # Ralph answers a statementId query with a StatementResult
        found: list[dict[str, Any]] = data["statements"]
        assert len(found) <= 1, f"Ralph holds {statement_id} {len(found)} times"
        return found[0] if found else None
    assert data["id"] == statement_id
    result: dict[str, Any] = data
    return result


async def ralph_all_about(
    session: aiohttp.ClientSession, server: RalphServer, mbox: str
) -> list[dict[str, Any]]:
    """Every statement Ralph holds about `mbox`, following `more` (a path on Ralph's root)."""
    url = (
        server.url
        + "statements?"
        + urlencode({"agent": json.dumps({"mbox": mbox}), "limit": RALPH_PAGE})
    )
    found: list[dict[str, Any]] = []
    for _ in range(200):
        async with session.get(
            url, headers=basic(server.username, server.password), timeout=HOP_TIMEOUT
        ) as response:
            assert response.status == 200, await response.text()
            page: Any = await response.json()
        found.extend(page["statements"])
        more = page.get("more")
        if not more:
            return found
        url = server.root_url + str(more).lstrip("/")
    raise AssertionError("Ralph's paging did not end")


def outbox_pending(path: Path) -> int:
    """Statements still pending (written ahead, not settled) in an outbox file."""
    conn = sqlite3.connect(path)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM statements WHERE state = 0").fetchone()
    finally:
        conn.close()
    return int(count)


# -- 1. a second real Ralph as a forwarding target ----------------------------------------------


@pytest.fixture
async def ralph_gateway(
    ralph: RalphServer, ralph_target: RalphServer, tmp_path: Path, aiohttp_client: Any
) -> Client:
    config = write_config(
        tmp_path,
        ralph.url,
        USERS,
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "forwardings": [ralph_target_entry(ralph_target, "ralph-target")],
            "data_dir": "data",
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


async def wait_in_ralph(
    session: aiohttp.ClientSession, server: RalphServer, ids: list[str], within: float = 15.0
) -> dict[str, dict[str, Any]]:
    check = deadline_loop(within, f"{len(ids)} statements in {server.url}")
    found: dict[str, dict[str, Any]] = {}
    while True:
        for statement_id in ids:
            if statement_id not in found:
                copy = await ralph_one(session, server, statement_id)
                if copy is not None:
                    found[statement_id] = copy
        if len(found) == len(ids):
            return found
        check()
        await asyncio.sleep(0.1)


async def forwarding_status(client: Client) -> dict[str, Any]:
    response = await client.get("/admin/forwarding", headers=ADMIN)
    assert response.status == 200, await response.text()
    targets: dict[str, Any] = (await response.json())["targets"]
    return targets


@pytest.mark.ralph
async def test_a_second_ralph_gets_each_statement_as_storage_holds_it(
    ralph_gateway: Client, ralph: RalphServer, ralph_target: RalphServer
) -> None:
    mbox = unique_mbox("second-ralph")
    response = await ralph_gateway.post(
        "/xAPI/statements", json=[statement(mbox, n) for n in range(3)], headers=LMS
    )
    assert response.status == 200, await response.text()
    ids: list[str] = await response.json()
    put_id = str(uuid.uuid4())
    response = await ralph_gateway.put(
        f"/xAPI/statements?statementId={put_id}", json=statement(mbox, 3), headers=LMS
    )
    assert response.status == 204, await response.text()
    ids.append(put_id)

    async with aiohttp.ClientSession() as session:
        copies = await wait_in_ralph(session, ralph_target, ids)
        stored = await wait_in_ralph(session, ralph, ids, within=1)
        for statement_id in ids:
            original, copy = stored[statement_id], copies[statement_id]
            assert copy["id"] == original["id"] == statement_id
            assert same_agent(original["authority"], LMS_AGENT), original
            assert same_agent(copy["authority"], original["authority"]), copy
            assert copy["timestamp"] == original["timestamp"]
            for key in ("actor", "verb", "object"):
                assert copy[key] == original[key]

        # The client sends two of them again, identical (id and timestamp included): storage
        # and target hold them already and say so; that is a delivery, not a failure.
        def resend(statement_id: str) -> dict[str, Any]:
            keep = ("id", "actor", "verb", "object", "timestamp")
            return {key: stored[statement_id][key] for key in keep}

        response = await ralph_gateway.post("/xAPI/statements", json=[resend(ids[0])], headers=LMS)
        assert response.status in (200, 204), await response.text()
        response = await ralph_gateway.put(
            f"/xAPI/statements?statementId={put_id}", json=resend(put_id), headers=LMS
        )
        assert response.status == 204, await response.text()
        # ... and once more inside a batch with a new statement: the new one gets through
        response = await ralph_gateway.post(
            "/xAPI/statements", json=[resend(ids[1]), statement(mbox, 4)], headers=LMS
        )
        assert response.status == 200, await response.text()
        new_id = next(i for i in await response.json() if i not in ids)
        (new_copy,) = (await wait_in_ralph(session, ralph_target, [new_id])).values()
        assert same_agent(new_copy["authority"], LMS_AGENT)

        async def drained() -> bool:
            figures = (await forwarding_status(ralph_gateway))["ralph-target"]
            return bool(figures["backlog"] == 0 and figures["delivered"] == 8)

        await eventually(drained, 10, "the target's backlog drained")
        figures = (await forwarding_status(ralph_gateway))["ralph-target"]
        assert figures["dead_letters"] == 0, figures
        assert figures["dead_lettered_total"] == 0, figures
        assert figures["oldest_age"] is None, figures
        # once each in the target, however often it was sent (ralph_one checks "once")
        assert {
            m: await ralph_one(session, ralph_target, m) is not None for m in [*ids, new_id]
        } == dict.fromkeys([*ids, new_id], True)
        everything = await ralph_all_about(session, ralph_target, mbox)
        assert sorted(s["id"] for s in everything) == sorted([*ids, new_id])


class Relay:
    """A TCP relay to a real server that can be switched off: a target that goes down.

    Off, nothing listens on its port (connection refused, as for a stopped LRS); on, every
    connection is relayed to the server as is.
    """

    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        assert upstream.hostname is not None
        assert upstream.port is not None
        self._upstream = (upstream.hostname, upstream.port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._tasks.difference_update(pipes)
            for stream in (writer, up_writer):
                stream.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
        with contextlib.suppress(OSError):
            sink.write_eof()


@pytest.mark.ralph
async def test_a_ralph_target_down_then_up_gets_every_statement_once(
    ralph: RalphServer, ralph_target: RalphServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    relay = Relay(ralph_target.url)  # off: the target is down from the start
    entry = ralph_target_entry(
        ralph_target,
        "ralph-down",
        max_retries=2,
        backoff_cap=0.3,
        url=f"http://127.0.0.1:{relay.port}/xAPI/statements",
    )
    config = write_config(
        tmp_path,
        ralph.url,
        USERS,
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "forwardings": [entry],
            "data_dir": "data",
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    mbox = unique_mbox("target-down")
    ids: list[str] = []
    for first in range(0, 12, 4):
        response = await client.post(
            "/xAPI/statements",
            json=[statement(mbox, n) for n in range(first, first + 4)],
            headers=LMS,
        )
        assert response.status == 200, await response.text()
        ids += await response.json()

    async def marked_down() -> bool:
        return bool((await forwarding_status(client))["ralph-down"]["state"] == "down")

    await eventually(marked_down, 10, "the target marked down")
    figures = (await forwarding_status(client))["ralph-down"]  # down until the relay starts
    assert figures["up"] is False
    assert figures["backlog"] == 12  # kept for it, counted in backlog and lag
    assert figures["oldest_age"] > 0
    assert figures["dead_letters"] == figures["dead_lettered_total"] == 0
    assert figures["last_error"]

    await relay.start()
    try:
        async with aiohttp.ClientSession() as session:
            await wait_in_ralph(session, ralph_target, ids)  # ralph_one: each at most once

            async def drained() -> bool:
                return not (await forwarding_status(client))["ralph-down"]["backlog"]

            await eventually(drained, 10, "the backlog drained")
            figures = (await forwarding_status(client))["ralph-down"]
            assert (figures["state"], figures["up"], figures["oldest_age"]) == ("up", True, None)
            assert figures["delivered"] == 12
            assert figures["dead_lettered_total"] == 0
            everything = await ralph_all_about(session, ralph_target, mbox)
            assert sorted(s["id"] for s in everything) == sorted(ids)
    finally:
        await client.close()
        await relay.stop()


# -- 2. kill -9 under load --------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This environment without LRS_GATEWAY* / RALPH_* (RALPH_XAPI_FORWARDINGS is read)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("LRS_GATEWAY", "RALPH_"))
    }


@dataclass
class GatewayProcess:
    """`python -m gateway serve` in a subprocess, logging to a file."""

    config: Path
    log: Path
    base: str
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(self.config),
                "serve",
                cwd=self.config.parent,
                env=clean_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        check = deadline_loop(20, f"the gateway serving\n{self.log_text()}")
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                assert self.proc.returncode is None, f"the gateway exited\n{self.log_text()}"
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"{self.base}/__lbheartbeat__") as response:
                        if response.status == 200:
                            return
                check()
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), 10)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]


@dataclass
class Recorder:
    """A scripted forwarding target: stores what it gets, counts how often it got each id."""

    received: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        batch: list[dict[str, Any]] = json.loads(await request.read())
        for item in batch:
            self.received[item["id"]] += 1
            self.bodies[item["id"]] = item
        return web.json_response([item["id"] for item in batch])

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/xAPI/statements", self.handle)
        return app


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield
    finally:
        await runner.cleanup()


@dataclass
class Load:
    """Batches to post; which ids got a 200 and which got no answer at all."""

    url: str
    batches: list[list[dict[str, Any]]]
    acked: set[str] = field(default_factory=set)
    unanswered: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)

    async def client(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while self.batches and not stop.is_set():
            batch = self.batches.pop(0)
            ids = [item["id"] for item in batch]
            started = time.monotonic()
            try:
                async with session.post(
                    self.url, json=batch, headers=LMS, timeout=HOP_TIMEOUT
                ) as response:
                    status, body = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError):
                self.unanswered.update(ids)  # killed mid-request: no retry, like a dumb client
                return
            self.latencies.append(time.monotonic() - started)
            assert status == 200, (status, body)
            assert json.loads(body) == ids
            self.acked.update(ids)

    async def run(
        self,
        clients: int,
        *,
        stop_when_acked: int | None = None,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(self.client(session, stop)) for _ in range(clients)]
            try:
                check = deadline_loop(20, "the load")
                while not all(task.done() for task in tasks):
                    for task in tasks:
                        if task.done():
                            task.result()  # a client that failed fails the test now
                    if stop_when_acked is not None and len(self.acked) >= stop_when_acked:
                        on_stop()  # the kill and the stop in one step: no client runs between
                        stop.set()
                        stop_when_acked = None
                    check()
                    await asyncio.sleep(0.002)
                for task in tasks:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


def crash_config(
    tmp_path: Path, ralph: RalphServer, ralph_target: RalphServer, port: int, scripted_port: int
) -> Path:
    (tmp_path / "auth.json").write_text(json.dumps(USERS))
    raw = {
        "server": {"port": port, "shutdown_timeout": 2},
        "auth": {"basic": {"credentials_file": "auth.json"}},
        "storage": {
            "url": ralph.url,
            "basic_username": ralph.username,
            "basic_password": ralph.password,
            "timeout": 5,
        },
        "forwardings": [
            ralph_target_entry(ralph_target, "ralph-target", batch_size=20),
            {
                "name": "scripted",
                "is_active": True,
                "url": f"http://127.0.0.1:{scripted_port}/xAPI/statements",
                "basic_username": "scripted",
                "basic_password": "scripted-pw",
                "max_retries": 2,
                "timeout": 2,
                "backoff_base": 0.05,
                "backoff_cap": 0.5,
                "batch_size": 20,
            },
        ],
        "data_dir": "data",
        # Writes left pending by the crash are older than the restart: the resolver settles
        # them at once whatever this is. It is above storage.timeout so that it never looks
        # at a write still in flight (see test_a_slow_storage_write_that_succeeds...).
        "outbox": {"resolve_pending_after": 6},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.ralph
async def test_kill_9_under_load_loses_nothing_and_stores_nothing_twice(
    ralph: RalphServer, ralph_target: RalphServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    total, per_batch, clients = 200, 5, 4
    mbox = unique_mbox("crash")
    # The client chooses the ids, so that unanswered statements can be looked for too.
    statements = [statement(mbox, n, id=str(uuid.uuid4())) for n in range(total)]
    batches = [statements[i : i + per_batch] for i in range(0, total, per_batch)]
    port, scripted_port = free_port(), free_port()
    config = crash_config(tmp_path, ralph, ralph_target, port, scripted_port)
    outbox = tmp_path / "data" / OUTBOX_FILE
    gateway = GatewayProcess(config, tmp_path / "gateway.log", f"http://127.0.0.1:{port}")
    load = Load(f"{gateway.base}/xAPI/statements", batches)
    scripted = Recorder()
    try:
        await gateway.start()
        await load.run(clients, stop_when_acked=total // 2, on_stop=gateway.kill)
        assert await gateway.wait() == -signal.SIGKILL
        killed_at = time.monotonic()
        acked_before_kill = len(load.acked)
        pending_after_kill = outbox_pending(outbox)

        await gateway.start()  # same config, same outbox
        await load.run(clients)  # the rest, through the new process
        assert not load.batches
        # the scripted target comes up
        async with serving(scripted.app(), scripted_port), aiohttp.ClientSession() as session:
            check = deadline_loop(30, "the backlog drained")
            while True:
                async with session.get(
                    f"{gateway.base}/admin/forwarding", headers=ADMIN
                ) as response:
                    assert response.status == 200
                    figures: dict[str, Any] = (await response.json())["targets"]
                if (
                    all(
                        figures[name]["backlog"] == 0 and figures[name]["dead_letters"] == 0
                        for name in ("ralph-target", "scripted")
                    )
                    and outbox_pending(outbox) == 0
                ):
                    break
                check()
                await asyncio.sleep(0.2)
            drained_at = time.monotonic()

            in_storage = await ralph_all_about(session, ralph, mbox)
            in_target = await ralph_all_about(session, ralph_target, mbox)
        status = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway",
                "--config",
                str(config),
                "forwarding",
                "status",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
            env=clean_env(),
            timeout=20,
        )
    finally:
        await gateway.stop()

    storage_counts = Counter(s["id"] for s in in_storage)
    target_counts = Counter(s["id"] for s in in_target)
    twice = {
        sid: (storage_counts[sid], target_counts[sid])
        for sid in storage_counts | target_counts
        if storage_counts[sid] > 1 or target_counts[sid] > 1
    }
    assert not twice, f"stored more than once (storage, target): {twice}"
    stored = set(storage_counts)
    # every acknowledged statement is in storage, and storage has nothing the client never sent
    assert load.acked <= stored, sorted(load.acked - stored)
    assert stored <= load.acked | load.unanswered
    # every target got exactly what storage holds: the acked ones, and the unanswered ones
    # that storage happened to store before the kill (settled by the pending resolver)
    assert set(target_counts) == stored, (
        sorted(stored - set(target_counts)),
        sorted(set(target_counts) - stored),
    )
    assert set(scripted.received) == stored, (
        sorted(stored - set(scripted.received)),
        sorted(set(scripted.received) - stored),
    )
    by_id = {s["id"]: s for s in in_storage}
    for copy in in_target:
        original = by_id[copy["id"]]
        assert copy["timestamp"] == original["timestamp"]
        assert same_agent(copy["authority"], LMS_AGENT)
        assert same_agent(original["authority"], LMS_AGENT)
    for statement_id, body in scripted.bodies.items():
        assert body["timestamp"] == by_id[statement_id]["timestamp"]
        assert same_agent(body["authority"], LMS_AGENT)

    assert status.returncode == 0, status.stderr
    cli = json.loads(status.stdout)
    for name in ("ralph-target", "scripted"):
        assert cli[name]["backlog"] == 0, cli
        assert cli[name]["dead_letters"] == 0, cli
        assert cli[name]["delivered"] >= len(stored), cli
    log = gateway.log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log, log[-4000:]
    if pending_after_kill:
        assert "pending statements settled against storage" in log, log[-4000:]
    report = (
        f"crash test: {len(load.acked)} acked ({acked_before_kill} before the kill), "
        f"{len(load.unanswered)} unanswered ({len(stored & load.unanswered)} of them "
        f"stored), {pending_after_kill} pending in the outbox after the kill, "
        f"scripted target got {sum(scripted.received.values())} for {len(stored)}; "
        f"POST max {max(load.latencies):.3f} s; drained "
        f"{drained_at - killed_at:.1f} s after the kill, total "
        f"{time.monotonic() - started:.1f} s"
    )
    print(report)  # shown with -s
    assert time.monotonic() - started < 60, report


# -- 3. the pending resolver, against a scripted storage --------------------------------------


@dataclass
class Stored:
    """What the scripted storage holds, and the statementId queries it was asked."""

    statements: dict[str, dict[str, Any]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)


StorageBehaviour = Callable[[web.Request, list[dict[str, Any]]], Awaitable[web.StreamResponse]]


def scripted_storage(stored: Stored, write: StorageBehaviour) -> FakeLRS:
    """GET by statementId answers from `stored` (404 if unknown); writes go to `write`."""

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "GET" and "statementId" in request.query:
            statement_id = request.query["statementId"]
            stored.asked.append(statement_id)
            if statement_id in stored.statements:
                return web.json_response(stored.statements[statement_id], headers=XAPI)
            return web.json_response({"detail": "not found"}, status=404, headers=XAPI)
        if request.method == "GET":  # the gateway's readiness check (about)
            return web.json_response({"detail": "not found"}, status=404, headers=XAPI)
        data = json.loads(body)
        return await write(request, data if isinstance(data, list) else [data])

    return FakeLRS(script)


def keep(stored: Stored, batch: list[dict[str, Any]]) -> web.Response:
    for item in batch:
        stored.statements[item["id"]] = item
    return web.json_response([item["id"] for item in batch], headers=XAPI)


MakeGateway = Callable[[FakeLRS, dict[str, Any]], Awaitable[tuple[Client, Recorder]]]


@pytest.fixture
def make_gateway(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> MakeGateway:
    async def make(storage: FakeLRS, settings: dict[str, Any]) -> tuple[Client, Recorder]:
        target = Recorder()
        storage_server: TestServer = await aiohttp_server(storage.app())
        target_server: TestServer = await aiohttp_server(target.app())
        config = write_config(
            tmp_path,
            str(storage_server.make_url("/xAPI/")),
            USERS,
            {
                "forwardings": [
                    {
                        "name": "t",
                        "is_active": True,
                        "url": str(target_server.make_url("/xAPI/statements")),
                        "basic_username": "t",
                        "basic_password": "t-pw",
                        "max_retries": 3,
                        "timeout": 2,
                        "backoff_base": 0.05,
                        "backoff_cap": 0.3,
                    }
                ],
                "data_dir": "data",
                **settings,
            },
        )
        client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        return client, target

    return make


async def pending_count(client: Client) -> int:
    forwarder = client.app[FORWARDER]

    async def count(tx: OutboxTransaction) -> int:
        return len(await tx.pending(time.time() + 3600))

    return await forwarder.outbox.call(count)


async def at_rest(client: Client) -> bool:
    """Nothing pending and nothing queued for target t: no delivery is still to come.

    Settling a write moves it out of pending and queues its deliveries in one commit, and a
    delivery leaves the backlog once the target has answered; both are read through the
    outbox's queue, behind any commit the requests answered so far have queued. At rest,
    the target has had everything it will ever get, wrong deliveries included.
    """
    if await pending_count(client):
        return False
    return bool((await forwarding_status(client))["t"]["backlog"] == 0)


async def test_resolver_forwards_what_storage_kept_and_never_what_it_did_not(
    make_gateway: MakeGateway,
) -> None:
    stored = Stored()

    async def write(request: web.Request, batch: list[dict[str, Any]]) -> web.StreamResponse:
        mbox = batch[0]["actor"]["mbox"]
        if "dropped" in mbox:  # the connection ends before storage stored anything
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.1)
            return web.Response(status=500)
        answer = keep(stored, batch)
        if "slow" in mbox:  # stored at once, answered after the gateway gave up (504)
            await asyncio.sleep(1.5)
        return answer

    client, target = await make_gateway(
        scripted_storage(stored, write),
        {"storage": {"timeout": 0.5}, "outbox": {"resolve_pending_after": 1}},
    )
    response = await client.post(
        "/xAPI/statements", json=statement("mailto:slow@example.com", 1), headers=LMS
    )
    assert response.status == 504, await response.text()
    response = await client.post(
        "/xAPI/statements", json=statement("mailto:dropped@example.com", 2), headers=LMS
    )
    assert response.status == 502, await response.text()
    response = await client.post(
        "/xAPI/statements", json=statement("mailto:ok@example.com", 3), headers=LMS
    )
    assert response.status == 200, await response.text()
    (ok_id,) = await response.json()
    (slow_id,) = [sid for sid in stored.statements if sid != ok_id]
    assert len(stored.statements) == 2  # the dropped one never reached storage

    async def settled() -> bool:
        return slow_id in target.received and await at_rest(client)

    # At rest, a wrong delivery of the dropped one would have reached the target already.
    await eventually(settled, 6, "the slow statement forwarded, nothing pending or queued")
    assert set(target.received) == {slow_id, ok_id}
    assert target.bodies[slow_id] == stored.statements[slow_id]  # exactly as stored
    # the resolver asked storage about both unanswered ones, the missing one included
    asked = set(stored.asked)
    assert slow_id in asked
    assert len(asked - {slow_id, ok_id}) == 1
    figures = await forwarding_status(client)
    assert figures["t"]["backlog"] == 0
    assert figures["t"]["delivered"] == 2
    assert figures["t"]["dead_letters"] == 0


# A write still waiting for storage is not the resolver's to settle, even when storage
# answers more slowly than outbox.resolve_pending_after.


async def slow_but_successful_write(
    make_gateway: MakeGateway, *, store_first: bool
) -> tuple[Client, Recorder, str]:
    """Storage answers 200 after 2.5 s (storage.timeout 5, resolve_pending_after 1)."""
    stored = Stored()

    async def write(request: web.Request, batch: list[dict[str, Any]]) -> web.StreamResponse:
        if store_first:
            keep(stored, batch)
        await asyncio.sleep(2.5)  # slow, but well within storage.timeout
        return keep(stored, batch)

    client, target = await make_gateway(
        scripted_storage(stored, write),
        {"storage": {"timeout": 5}, "outbox": {"resolve_pending_after": 1}},
    )
    response = await client.post(
        "/xAPI/statements", json=statement("mailto:slow@example.com", 1), headers=LMS
    )
    assert response.status == 200, await response.text()  # the client was told: stored
    (sid,) = await response.json()
    return client, target, sid


async def test_a_slow_write_storage_accepts_is_forwarded(make_gateway: MakeGateway) -> None:
    client, target, sid = await slow_but_successful_write(make_gateway, store_first=False)

    async def forwarded() -> bool:
        return sid in target.received

    await eventually(forwarded, 4, "the acknowledged statement forwarded")
    assert (await forwarding_status(client))["t"]["backlog"] == 0


async def test_a_slow_write_the_resolver_finds_is_forwarded_once(make_gateway: MakeGateway) -> None:
    client, target, sid = await slow_but_successful_write(make_gateway, store_first=True)

    async def delivered() -> bool:
        figures = (await forwarding_status(client))["t"]
        return bool(figures["delivered"] >= 1) and await at_rest(client)

    # At rest (nothing pending, nothing queued), a second delivery would have shown already.
    await eventually(delivered, 4, "the acknowledged statement forwarded, nothing left to do")
    assert target.received == Counter({sid: 1})
