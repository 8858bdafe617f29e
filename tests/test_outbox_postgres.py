"""The outbox in PostgreSQL: group commits, leases between replicas, a database that goes away.

Against the real PostgreSQL of the `postgres` fixture, each test in a database of its own.
Two `PostgresOutbox` objects are two replicas (each its own owner and pool).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from realparts.postgres import PostgresServer
from support import gateway_env, write_config

from gateway.clock import ManualClock
from gateway.errors import StoreUnavailable
from gateway.forwarding.operations import Drop, MarkReady, WritePending
from gateway.forwarding.postgres_outbox import PostgresOutbox
from gateway.forwarding.store import BACKLOG_FULL, TargetState
from gateway.forwarding.transaction import OutboxTransaction

pytestmark = pytest.mark.postgres

TARGETS = [("a", 1000), ("b", 1000)]


@asynccontextmanager
async def replica(dsn: str, clock: ManualClock | None = None) -> AsyncIterator[PostgresOutbox]:
    outbox = PostgresOutbox(dsn, lease=30.0, timeout=3.0, clock=clock or ManualClock())
    await outbox.open()
    try:
        yield outbox
    finally:
        await outbox.close()


async def written(outbox: PostgresOutbox, count: int, *, ready: bool = True) -> list[int]:
    items = [(f"id-{n}", b'{"id":"id-%d"}' % n, None) for n in range(count)]
    seqs = await outbox.call(lambda tx: tx.write_pending(items, "1.0.3"))
    if ready:
        await outbox.call(lambda tx: tx.mark_ready(seqs, TARGETS))
    return seqs


async def test_a_statement_goes_from_pending_to_delivered_and_is_collected(
    postgres: PostgresServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    clock = ManualClock()
    async with replica(dsn, clock) as outbox:
        seqs = await written(outbox, 3, ready=False)
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 3
        clock.advance(60)
        pending = await outbox.call(lambda tx: tx.pending(clock.now()))
        assert [statement_id for _, statement_id in pending] == ["id-0", "id-1", "id-2"]
        await outbox.call(lambda tx: tx.mark_ready(seqs[:2], TARGETS))
        await outbox.call(lambda tx: tx.drop(seqs[2:]))
        assert await outbox.call(lambda tx: tx.pending(clock.now() + 1)) == []

        batch = await outbox.call(lambda tx: tx.claim("a", 10))
        assert [(c.seq, c.body, c.version) for c in batch] == [
            (seqs[0], b'{"id":"id-0"}', "1.0.3"),
            (seqs[1], b'{"id":"id-1"}', "1.0.3"),
        ]
        await outbox.call(lambda tx: tx.ack("a", seqs[:2]))
        stats = await outbox.call(lambda tx: tx.stats(["a", "b"]))
        assert (stats["a"].backlog, stats["a"].delivered, stats["a"].oldest_age) == (0, 2, None)
        assert (stats["b"].backlog, stats["b"].delivered) == (2, 0)
        assert stats["b"].oldest_age == pytest.approx(60.0)
        assert (outbox.backlog.get("a", 0), outbox.backlog["b"]) == (0, 2)
        assert await outbox.call(lambda tx: tx.targets()) == ["a", "b"]

        # b still needs both: they stay; the last ack deletes them.
        assert await statement_rows(dsn) == 2
        await outbox.call(lambda tx: tx.ack("b", seqs[:2]))
        assert await statement_rows(dsn) == 0


async def test_the_sweep_collects_what_acks_side_by_side_left_every_ten_minutes(
    postgres: PostgresServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    clock = ManualClock()
    async with replica(dsn, clock) as outbox:
        await written(outbox, 3)
        # What two replicas acking the same statements for two targets at once leave: no
        # delivery, no dead letter, the statement still there (neither saw the other's ack).
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("DELETE FROM outbox_deliveries")
        finally:
            await connection.close()
        assert await outbox.call(lambda tx: tx.collect_garbage()) == 3
        await written(outbox, 2)
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("DELETE FROM outbox_deliveries")
        finally:
            await connection.close()
        assert await outbox.call(lambda tx: tx.collect_garbage()) == 0  # not yet: 10 min
        clock.advance(600)
        assert await outbox.call(lambda tx: tx.collect_garbage()) == 2
        assert await statement_rows(dsn) == 0


async def statement_rows(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM outbox_statements"))
    finally:
        await connection.close()


async def test_two_replicas_never_claim_the_same_delivery_and_a_dead_ones_claims_end(
    postgres: PostgresServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as one, replica(dsn) as two:
        assert one.ident == two.ident
        assert len(one.ident) == 12
        seqs = await written(one, 10)
        first, second = await asyncio.gather(
            one.call(lambda tx: tx.claim("a", 4)), two.call(lambda tx: tx.claim("a", 4))
        )
        got_one, got_two = {c.seq for c in first}, {c.seq for c in second}
        assert len(got_one) == len(got_two) == 4
        assert not got_one & got_two
        # A replica's own claims come back to it (after a failed send it claims again)...
        again = await one.call(lambda tx: tx.claim("a", 4))
        assert {c.seq for c in again} == got_one
        # ...and the rest is for anyone.
        rest = await two.call(lambda tx: tx.claim("a", 10))
        assert {c.seq for c in rest} == set(seqs) - got_one
        assert await one.call(lambda tx: tx.renew("a", sorted(got_one))) == 4
        assert await two.call(lambda tx: tx.renew("a", sorted(got_one))) == 0

        # `one` dies: nothing of it is claimable until its lease ends (made to end now).
        assert await two.call(lambda tx: tx.claim("a", 10)) != []  # its own, again
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("UPDATE outbox_deliveries SET lease_until = 0")
    finally:
        await connection.close()
    async with replica(dsn) as three:
        taken = await three.call(lambda tx: tx.claim("a", 10))
        assert [c.seq for c in taken] == seqs


async def test_a_failed_send_ends_the_lease_so_any_replica_may_retry(
    postgres: PostgresServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as one, replica(dsn) as two:
        seqs = await written(one, 2)
        await one.call(lambda tx: tx.claim("a", 10))
        assert await two.call(lambda tx: tx.claim("a", 10)) == []
        await one.call(lambda tx: tx.retry("a", seqs, 0.0, "HTTP 503"))
        retried = await two.call(lambda tx: tx.claim("a", 10))
        assert [(c.seq, c.attempts) for c in retried] == [(seqs[0], 1), (seqs[1], 1)]
        stats = await two.call(lambda tx: tx.stats(["a"]))
        assert stats["a"].retries == 2  # one's counters and two's add up


async def test_dead_letters_the_backlog_limit_and_replay(postgres: PostgresServer) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as outbox:
        items = [(f"id-{n}", b"{}", None) for n in range(5)]
        seqs = await outbox.call(lambda tx: tx.write_pending(items))
        await outbox.call(lambda tx: tx.mark_ready(seqs, [("a", 3)]))
        stats = (await outbox.call(lambda tx: tx.stats(["a"])))["a"]
        assert (stats.backlog, stats.dead_letters, stats.dead_lettered_total) == (3, 2, 2)
        await outbox.call(lambda tx: tx.dead_letter("a", seqs[:1], "HTTP 400: bad"))
        stats = (await outbox.call(lambda tx: tx.stats(["a"])))["a"]
        assert (stats.backlog, stats.dead_letters) == (2, 3)
        assert await outbox.call(lambda tx: tx.requeue("a", transient_only=True)) == 0
        assert await outbox.call(lambda tx: tx.requeue("a", transient_only=False, limit=2)) == 2
        assert await outbox.call(lambda tx: tx.requeue("a", transient_only=False)) == 1
        claimed = await outbox.call(lambda tx: tx.claim("a", 10))
        assert [c.seq for c in claimed] == seqs
        connection = await asyncpg.connect(dsn)
        try:
            reasons = await connection.fetch("SELECT reason FROM outbox_dead_letters")
        finally:
            await connection.close()
        assert reasons == []
        assert BACKLOG_FULL == "backlog full"


async def test_target_states_are_shared(postgres: PostgresServer) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as one, replica(dsn) as two:
        assert await two.call(lambda tx: tx.target_state("a")) == TargetState()
        await one.call(lambda tx: tx.set_state("a", TargetState(False, 1000.0, "HTTP 503")))
        assert await two.call(lambda tx: tx.target_state("a")) == TargetState(
            False, 1000.0, "HTTP 503"
        )


async def test_one_failing_operation_does_not_sink_the_others_in_its_commit(
    postgres: PostgresServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as outbox:

        async def broken(tx: OutboxTransaction) -> None:
            await tx.write_pending([("x", b"{}", None)])
            raise ValueError("a bug in one operation")

        items = [("ok", b"{}", None)]
        results = await asyncio.gather(
            outbox.call(lambda tx: tx.write_pending(items)),
            outbox.call(broken),
            outbox.call(lambda tx: tx.write_pending(items)),
            return_exceptions=True,
        )
        assert isinstance(results[1], ValueError)
        assert all(isinstance(r, list) for r in (results[0], results[2]))
        pending = await outbox.call(lambda tx: tx.pending(1e12))
        assert sorted(i for _, i in pending) == ["ok", "ok"]  # the broken one left nothing


async def test_a_database_that_goes_away_is_a_503_and_work_resumes_when_it_is_back(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as outbox:
        await written(outbox, 1)
        await asyncio.to_thread(postgres.stop)
        try:
            with pytest.raises(StoreUnavailable) as failed:
                await written(outbox, 1)
            assert failed.value.status == 503
            assert failed.value.retry_after
            with pytest.raises(StoreUnavailable):
                await outbox.call(lambda tx: tx.stats(["a"]))
        finally:
            await asyncio.to_thread(postgres.start)
        await written(outbox, 1)
        stats = await outbox.call(lambda tx: tx.stats(["a"]))
        assert stats["a"].backlog == 2
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("postgres_outbox")]
    assert sum("cannot be reached" in line for line in lines) == 1  # once, not per call
    assert sum("is back" in line for line in lines) == 1
    assert postgres.password is not None
    assert all(postgres.password not in line for line in lines)


async def test_the_forwarding_commands_read_and_replay_the_shared_outbox(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as outbox:
        seqs = await written(outbox, 4)
        await outbox.call(lambda tx: tx.dead_letter("a", seqs[:3], "HTTP 400: refused"))
        await outbox.call(lambda tx: tx.ack("b", seqs))
    write_config(
        tmp_path,
        "http://127.0.0.1:9/xAPI/",
        [],
        {
            "forwardings": [
                {
                    "name": "a",
                    "url": "http://127.0.0.1:9/xAPI/statements",
                    "timeout": 5,
                    "max_retries": 1,
                    "is_active": True,
                }
            ],
            "store": {"url": dsn},
        },
    )
    config = tmp_path / "config.yaml"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(config), *args],
            cwd=tmp_path,
            env=gateway_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    status = await asyncio.to_thread(cli, "forwarding", "status", "--json")
    assert status.returncode == 0, status.stderr
    figures = json.loads(status.stdout)
    assert (figures["a"]["backlog"], figures["a"]["dead_letters"]) == (1, 3)
    assert (figures["b"]["backlog"], figures["b"]["delivered"]) == (0, 4)  # known, not configured
    replayed = await asyncio.to_thread(cli, "forwarding", "replay", "--target", "a")
    assert replayed.returncode == 0, replayed.stderr
    assert "a: 3 dead letters re-queued" in replayed.stdout
    unknown = await asyncio.to_thread(cli, "forwarding", "replay", "--target", "nope")
    assert unknown.returncode == 1
    assert "known: a, b" in unknown.stderr
    status = await asyncio.to_thread(cli, "forwarding", "status", "--json")
    assert json.loads(status.stdout)["a"]["backlog"] == 4
    assert postgres.password is not None
    for run in (status, replayed, unknown):
        assert postgres.password not in run.stdout + run.stderr


async def test_the_request_paths_operations_of_a_group_are_merged_and_each_gets_its_own(
    postgres: PostgresServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    async with replica(dsn) as outbox:
        requests = [
            [(f"r{n}-{k}", b'{"n":%d}' % n, None) for k in range(1 + n % 3)] for n in range(60)
        ]
        commits = outbox.commits
        written = await asyncio.gather(
            *(outbox.call(WritePending(items, "1.0.3")) for items in requests)
        )
        assert outbox.commits - commits < 30  # groups, not a commit per request
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch("SELECT seq, statement_id FROM outbox_statements")
            ids: dict[int, str] = {row[0]: row[1] for row in rows}
        finally:
            await connection.close()
        for items, seqs in zip(requests, written, strict=True):
            assert [ids[seq] for seq in seqs] == [item[0] for item in items]  # its own, in order
        settled: list[asyncio.Future[Any]] = []
        done = asyncio.Event()

        def then(future: asyncio.Future[Any]) -> None:
            settled.append(future)
            if len(settled) == len(written):
                done.set()

        for n, seqs in enumerate(written):
            await outbox.submit(MarkReady(seqs, TARGETS) if n % 4 else Drop(seqs), then)
        await asyncio.wait_for(done.wait(), 10)
        assert all(f.exception() is None for f in settled)
        stats = await outbox.read(lambda tx: tx.stats(["a", "b"]))
        kept = sum(len(seqs) for n, seqs in enumerate(written) if n % 4)
        assert (stats["a"].backlog, stats["b"].backlog) == (kept, kept)
        assert await outbox.read(lambda tx: tx.pending(1e12)) == []  # each settled, one way


async def test_a_tenants_pending_writes_are_settled_by_its_own_forwarders_only(
    postgres: PostgresServer,
) -> None:
    """Each tenant's resolver asks its own storage: another tenant's pending rows, which
    that storage would not hold, must never reach it (it would drop them)."""
    dsn = await asyncio.to_thread(postgres.new_database)
    physics = PostgresOutbox(dsn, tenant="physics")
    default = PostgresOutbox(dsn)
    await physics.open()
    await default.open()
    try:
        await physics.call(WritePending([("p-1", b"{}", None)]))
        await default.call(WritePending([("d-1", b"{}", None)]))
        assert [i for _, i in await physics.read(lambda tx: tx.pending(1e12))] == ["p-1"]
        assert [i for _, i in await default.read(lambda tx: tx.pending(1e12))] == ["d-1"]
    finally:
        await physics.close()
        await default.close()
