"""Scale-out on PostgreSQL with real parts: replicas that die, a database that goes away.

- Three gateway processes (separate `serve` processes) share one PostgreSQL outbox, store
  in a real Ralph and forward to two more; clients spread over them; one replica is killed
  with -9 under load and never restarted: every statement a client got 200 for reaches
  both targets, none stored twice, within 30 s (its claims end with their lease, its
  pending writes are settled by the others).
- Two worker processes (`serve --workers 2`) share it too: each statement is sent once,
  and the figures are reported once, not once per worker.
- PostgreSQL is stopped for 20 s under load, then started: clients get 503 with
  Retry-After meanwhile (never 200 for a statement that was not recorded), readiness says
  so, a read that needs no store still works; nothing accepted is lost, the backlog drains.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from realparts.postgres import PostgresServer
from realparts.process import free_port
from realparts.ralph import RalphServer
from support import FakeLRS, eventually, served_gateway, write_config
from test_forwarding_real import (
    ADMIN,
    HOP_TIMEOUT,
    LMS,
    USERS,
    GatewayProcess,
    deadline_loop,
    ralph_all_about,
    ralph_target_entry,
    statement,
    unique_mbox,
)

pytestmark = [pytest.mark.postgres, pytest.mark.ralph]

LEASE = 4.0  # seconds: a dead replica's claims are taken over this long after it died
TARGET_TIMEOUT = 2.0


def replica_config(
    directory: Path, dsn: str, storage: RalphServer, targets: list[RalphServer], port: int
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "auth.json").write_text(json.dumps(USERS))
    raw = {
        "server": {"port": port, "shutdown_timeout": 2},
        "auth": {"basic": {"credentials_file": "auth.json"}},
        "storage": {
            "url": storage.url,
            "basic_username": storage.username,
            "basic_password": storage.password,
            "timeout": 5,
        },
        "forwardings": [
            ralph_target_entry(
                target, f"ralph-{n}", batch_size=20, timeout=TARGET_TIMEOUT, max_retries=2
            )
            for n, target in enumerate(targets)
        ],
        "data_dir": "data",
        "store": {"url": dsn, "lease": LEASE},
        # Above storage.timeout: a replica never settles a write another still waits on.
        "outbox": {"resolve_pending_after": 6},
        "lockout": {"enabled": False},
        "limits": {"upstream_queue_timeout": 0.5},  # 5 + 0.5 s a write waits at most, < 6
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass
class SpreadLoad:
    """Batches posted round-robin over replicas, as a load balancer would spread them.

    A replica that does not answer is left out from then on (its health check failed), and
    what was sent to it counts as unanswered; anything but 200 or 503 fails the test.
    """

    bases: list[str]
    batches: list[list[dict[str, Any]]]
    acked: set[str] = field(default_factory=set)
    unanswered: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # 503: not recorded, the client retries
    retry_after: set[str] = field(default_factory=set)  # the Retry-After values seen
    dead: set[str] = field(default_factory=set)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    async def client(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while self.batches and not stop.is_set():
            live = [b for b in self.bases if b not in self.dead]
            base = live[next(self._turn) % len(live)]
            batch = self.batches.pop(0)
            ids = [item["id"] for item in batch]
            try:
                async with session.post(
                    f"{base}/xAPI/statements", json=batch, headers=LMS, timeout=HOP_TIMEOUT
                ) as response:
                    status, body = response.status, await response.read()
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                self.unanswered.update(ids)
                self.dead.add(base)
                continue
            if status == 503:
                self.refused.update(ids)
                self.retry_after.add(retry_after or "")
                self.batches.append(batch)  # a good client tries again later
                await asyncio.sleep(0.2)
                continue
            assert status == 200, (status, body)
            assert json.loads(body) == ids
            self.acked.update(ids)

    async def run(self, clients: int, stop: asyncio.Event, within: float) -> None:
        connector = aiohttp.TCPConnector(limit=clients, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(self.client(session, stop)) for _ in range(clients)]
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), within)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def outbox_rows(dsn: str) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        pending = await connection.fetchval(
            "SELECT count(*) FROM outbox_statements WHERE state = 0"
        )
        deliveries = await connection.fetchval("SELECT count(*) FROM outbox_deliveries")
        leased = await connection.fetchval(
            "SELECT count(*) FROM outbox_deliveries "
            "WHERE lease_until > extract(epoch FROM clock_timestamp())"
        )
        dead = await connection.fetchval("SELECT count(*) FROM outbox_dead_letters")
    finally:
        await connection.close()
    return {"pending": pending, "deliveries": deliveries, "leased": leased, "dead": dead}


async def drained(dsn: str, within: float, what: str) -> float:
    """Wait until nothing is pending, owed or dead-lettered; when that was (monotonic)."""
    check = deadline_loop(within, what)
    while True:
        rows = await outbox_rows(dsn)
        if rows["pending"] == rows["deliveries"] == rows["dead"] == 0:
            return time.monotonic()
        check()
        await asyncio.sleep(0.2)


async def counts_in(
    session: aiohttp.ClientSession, servers: list[RalphServer], mbox: str
) -> list[Counter[str]]:
    return [
        Counter(s["id"] for s in await ralph_all_about(session, server, mbox)) for server in servers
    ]


def assert_once_each(counts: list[Counter[str]]) -> None:
    for count in counts:
        twice = {sid: n for sid, n in count.items() if n > 1}
        assert not twice, f"stored more than once: {twice}"


async def test_three_replicas_one_killed_under_load_every_statement_reaches_both_targets_once(
    tmp_path: Path,
    postgres: PostgresServer,
    ralph: RalphServer,
    ralph_target: RalphServer,
    ralph_second_target: RalphServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    targets = [ralph_target, ralph_second_target]
    total, per_batch, clients = 300, 5, 6
    mbox = unique_mbox("scale-out")
    statements = [statement(mbox, n, id=str(uuid.uuid4())) for n in range(total)]
    batches = [statements[i : i + per_batch] for i in range(0, total, per_batch)]
    replicas = []
    for n in range(3):
        port = free_port()
        config = replica_config(tmp_path / f"r{n}", dsn, ralph, targets, port)
        replicas.append(
            GatewayProcess(config, config.parent / "gateway.log", f"http://127.0.0.1:{port}")
        )
    load = SpreadLoad([r.base for r in replicas], batches)
    victim = replicas[0]
    stop = asyncio.Event()
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        running = asyncio.create_task(load.run(clients, stop, within=60))
        check = deadline_loop(30, "half the load acknowledged")
        while len(load.acked) < total // 2:
            check()
            await asyncio.sleep(0.005)
        victim.kill()
        killed_at = time.monotonic()
        assert await victim.wait() == -signal.SIGKILL
        at_kill = await outbox_rows(dsn)
        await running
        assert not load.batches
        done_at = await drained(dsn, 30, "every statement delivered after the kill")
        async with aiohttp.ClientSession() as session:
            in_storage, *in_targets = await counts_in(session, [ralph, *targets], mbox)
            async with session.get(
                f"{replicas[1].base}/admin/forwarding", headers=ADMIN
            ) as response:
                assert response.status == 200
                status = (await response.json())["targets"]
    finally:
        for replica in replicas:
            await replica.stop()

    assert_once_each([in_storage, *in_targets])
    stored = set(in_storage)
    assert load.acked <= stored, sorted(load.acked - stored)
    assert stored <= load.acked | load.unanswered
    for name, count in zip(("ralph-0", "ralph-1"), in_targets, strict=True):
        assert set(count) == stored, (name, sorted(stored - set(count)))
        assert status[name]["backlog"] == 0
        assert status[name]["delivered"] >= len(stored)
    assert done_at - killed_at < 30
    for replica in replicas[1:]:
        log = replica.log.read_text(encoding="utf-8")
        assert "Traceback" not in log, log[-4000:]
    print(
        f"scale-out: {len(load.acked)} acked over 3 replicas, {len(load.unanswered)} "
        f"unanswered by the killed one ({len(stored & load.unanswered)} of them stored); "
        f"at the kill: {at_kill}; drained {done_at - killed_at:.1f} s after the kill"
    )


async def test_postgresql_stopped_for_20_seconds_under_load_is_503_and_loses_nothing(
    tmp_path: Path, postgres: PostgresServer, ralph: RalphServer, ralph_target: RalphServer
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    mbox = unique_mbox("pg-down")
    total, per_batch, clients = 400, 5, 4
    statements = [statement(mbox, n, id=str(uuid.uuid4())) for n in range(total)]
    batches = [statements[i : i + per_batch] for i in range(0, total, per_batch)]
    port = free_port()
    config = replica_config(tmp_path / "r", dsn, ralph, [ralph_target], port)
    gateway = GatewayProcess(config, config.parent / "gateway.log", f"http://127.0.0.1:{port}")
    load = SpreadLoad([gateway.base], batches)
    stop = asyncio.Event()
    outage: dict[str, Any] = {}
    try:
        await gateway.start()
        running = asyncio.create_task(load.run(clients, stop, within=120))
        check = deadline_loop(30, "a quarter of the load acknowledged")
        while len(load.acked) < total // 4:
            check()
            await asyncio.sleep(0.005)
        await asyncio.to_thread(postgres.stop)
        stopped_at = time.monotonic()
        try:
            acked_when_stopped = len(load.acked)
            await asyncio.sleep(3)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{gateway.base}/__heartbeat__") as response:
                    outage["readiness"] = response.status
                    outage["checks"] = await response.json()
                # A read needs no store: it goes to storage as ever.
                async with session.get(
                    f"{gateway.base}/xAPI/statements",
                    params={"agent": json.dumps({"mbox": mbox}), "limit": "1"},
                    headers=ADMIN,
                ) as response:
                    outage["read"] = response.status
            acked_early = len(load.acked)
            await asyncio.sleep(max(0.0, 20 - (time.monotonic() - stopped_at)))
            outage["acked_during"] = len(load.acked) - acked_early
        finally:
            await asyncio.to_thread(postgres.start)
        await running
        assert not load.batches
        await drained(dsn, 30, "the backlog drained after the outage")
        async with aiohttp.ClientSession() as session:
            in_storage, in_target = await counts_in(session, [ralph, ralph_target], mbox)
    finally:
        await gateway.stop()

    assert outage["readiness"] == 503, outage
    assert outage["read"] == 200, outage
    assert outage["acked_during"] == 0  # nothing accepted that was not recorded
    assert load.refused, "no client saw a 503 during the outage"
    assert load.retry_after
    assert "" not in load.retry_after
    assert_once_each([in_storage, in_target])
    assert load.acked == {s["id"] for s in statements}  # every batch went through in the end
    assert load.acked <= set(in_storage)
    assert set(in_target) == set(in_storage)
    log = gateway.log.read_text(encoding="utf-8")
    assert "Traceback" not in log, log[-4000:]
    assert postgres.password is not None
    assert postgres.password not in log
    # One line when it went, one when it came back: not one per request.
    assert log.count("PostgreSQL at") == 2, log[-4000:]
    print(
        f"PostgreSQL outage: {acked_when_stopped} acked before, {len(load.refused)} refused "
        f"with 503 (Retry-After {sorted(load.retry_after)}), readiness {outage['readiness']}"
    )


async def test_worker_processes_share_the_postgresql_outbox_and_report_it_once(
    tmp_path: Path, postgres: PostgresServer, aiohttp_server: Any
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    storage_lrs, target_lrs = FakeLRS(), FakeLRS()
    storage = await aiohttp_server(storage_lrs.app())
    target = await aiohttp_server(target_lrs.app())
    port = free_port()
    write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        {
            "server": {"port": port, "shutdown_timeout": 5},
            "data_dir": "data",
            "store": {"url": dsn},
            "forwardings": [
                {
                    "name": "t",
                    "url": str(target.make_url("/xAPI/statements")),
                    "is_active": True,
                    "max_retries": 3,
                    "timeout": 5,
                }
            ],
        },
    )
    sent = 30
    async with served_gateway(tmp_path, port, workers=2) as gateway:
        connector = aiohttp.TCPConnector(force_close=True)  # spread over both workers
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in range(sent):
                async with session.post(
                    f"{gateway.base}/xAPI/statements",
                    json=statement("mailto:w@x.org", n),
                    headers=LMS,
                ) as response:
                    assert response.status == 200, await response.text()

            async def forwarded() -> bool:
                async with session.get(
                    f"{gateway.base}/admin/forwarding", headers=ADMIN
                ) as response:
                    status = await response.json()
                return bool(status["targets"]["t"]["delivered"] == sent)

            await eventually(forwarded, 30, "every statement forwarded")
            families: dict[str, list[Any]] = {}

            async def scraped() -> bool:
                async with session.get(f"{gateway.base}/metrics") as response:
                    text = await response.text()
                families.clear()
                for family in text_string_to_metric_families(text):
                    families[family.name] = family.samples
                found = families.get("lrs_gateway_forwarding_delivered", [])
                return [s.value for s in found if s.name.endswith("_total")] == [sent]

            await eventually(scraped, 30, "the deliveries once in a scrape, not per worker")
    posted = [r for r in target_lrs.seen if r.method == "POST"]
    ids = [s["id"] for r in posted for s in json.loads(r.body)]
    assert len(ids) == len(set(ids)) == sent  # each once, whichever worker sent it
    (delivered,) = [
        s for s in families["lrs_gateway_forwarding_delivered"] if s.name.endswith("_total")
    ]
    assert len(delivered.labels["outbox"]) == 12
    assert "Traceback" not in gateway.log()
