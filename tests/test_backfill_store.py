"""Backfills and live origins in the outbox: one contract, run on SQLite and on PostgreSQL.

Every test runs twice: on a SQLite outbox file and on a PostgreSQL outbox (the real server
of the `postgres` fixture, a database per test). Time is a ManualClock the outboxes share;
two outboxes open on the same file or database are two processes (the gateway and the
CLI's backfill, or two replicas).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import cast

import asyncpg
import pytest
from realparts.postgres import PostgresServer

import gateway.store.postgres as postgres_schema
from gateway.clock import ManualClock
from gateway.forwarding import store as sqlite_schema
from gateway.forwarding.operations import MarkReady
from gateway.forwarding.outbox import SqliteOutbox
from gateway.forwarding.postgres_outbox import PostgresOutbox
from gateway.forwarding.store import LIVE_WINDOW, BackfillBusy, BackfillState, LiveStart
from gateway.forwarding.transaction import Outbox, OutboxTransaction

T0 = 1_700_000_000.0
SINCE, UNTIL = "2024-01-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"
STALE = 60.0  # seconds without a heartbeat after which a running backfill may be taken
Item = tuple[str, bytes, bytes | None, str | None]
# Targets an outbox of the version before backfills knows, one per place it may know them.
KNOWN = ("in-deliveries", "in-dead-letters", "in-counters", "in-states")


class Backend:
    """Outboxes on one SQLite file or one PostgreSQL database."""

    name: str

    def opened(self, clock: ManualClock) -> AbstractAsyncContextManager[Outbox]:
        """An outbox open on this storage (another process's, if one is open already)."""
        raise NotImplementedError

    async def make_legacy(self) -> None:
        """Storage at the version before backfills, knowing each target of KNOWN."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    @asynccontextmanager
    async def opened(self, clock: ManualClock) -> AsyncIterator[Outbox]:
        outbox = SqliteOutbox(self.path, synchronous="normal", clock=clock)
        await outbox.open()
        try:
            yield outbox
        finally:
            await outbox.close()

    async def make_legacy(self) -> None:
        # What OutboxStore made before backfills: the schema and the first 3 migrations.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.executescript(sqlite_schema._SCHEMA)
            for step in sqlite_schema._MIGRATIONS[:3]:
                step(conn)
            conn.execute("PRAGMA user_version = 3")
            conn.execute(
                "INSERT INTO statements(seq, statement_id, body, state, created) "
                "VALUES (1, 'id-1', x'7b7d', 1, 0)"
            )
            conn.execute("INSERT INTO deliveries(target, seq) VALUES ('in-deliveries', 1)")
            conn.execute(
                "INSERT INTO dead_letters(target, seq, reason, transient, failed_at) "
                "VALUES ('in-dead-letters', 1, 'HTTP 400', 0, 0)"
            )
            conn.execute("INSERT INTO counters(target, name, value) VALUES ('in-counters', 'x', 1)")
            conn.execute("INSERT INTO target_states(target, up, since) VALUES ('in-states', 1, 0)")
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
        assert not tables & {"backfills", "live_origins", "live_window"}


class PostgresBackend(Backend):
    name = "postgres"
    BEFORE_BACKFILLS = 7  # the schema version before migration 8 made the backfill tables

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    @asynccontextmanager
    async def opened(self, clock: ManualClock) -> AsyncIterator[Outbox]:
        outbox = PostgresOutbox(self.dsn, lease=30.0, timeout=5.0, clock=clock)
        await outbox.open()
        try:
            yield outbox
        finally:
            await outbox.close()

    async def make_legacy(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            # The gateway's own migrate, with the migrations of the version before.
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(
                    postgres_schema,
                    "MIGRATIONS",
                    postgres_schema.MIGRATIONS[: self.BEFORE_BACKFILLS],
                )
                await postgres_schema.migrate(conn)
            assert await postgres_schema.schema_version(conn) == self.BEFORE_BACKFILLS
            seq = await conn.fetchval(
                "INSERT INTO outbox_statements (statement_id, body, state, created) "
                "VALUES ('id-1', '\\x7b7d', 1, 0) RETURNING seq"
            )
            await conn.execute(
                "INSERT INTO outbox_deliveries (target, seq) VALUES ('in-deliveries', $1)", seq
            )
            await conn.execute(
                "INSERT INTO outbox_dead_letters (target, seq, reason, transient, failed_at) "
                "VALUES ('in-dead-letters', $1, 'HTTP 400', false, 0)",
                seq,
            )
            await conn.execute(
                "INSERT INTO outbox_counters (target, name, owner, value) "
                "VALUES ('in-counters', 'x', 'old', 1)"
            )
            await conn.execute(
                "INSERT INTO outbox_target_states (target, up, since) VALUES ('in-states', true, 0)"
            )
            assert await conn.fetchval("SELECT to_regclass('outbox_live_origins')") is None
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "outbox.sqlite3")
    server = cast(PostgresServer, request.getfixturevalue("postgres"))
    return PostgresBackend(server.new_database())


def history(count: int, prefix: str = "h") -> list[Item]:
    """Statements of storage's history, each its own bytes, parts and version."""
    return [
        (
            f"{prefix}-{n}",
            b'{"id":"%s-%d"}' % (prefix.encode(), n),
            None if n % 2 else b"parts-%d" % n,
            "2.0.0" if n % 2 else "1.0.3",
        )
        for n in range(count)
    ]


async def live(outbox: Outbox, ids: Sequence[str], targets: Sequence[tuple[str, int]]) -> None:
    """Statements the gateway took and storage accepted, queued for `targets`."""
    items = [(i, b'{"id":"%s"}' % i.encode(), None) for i in ids]
    seqs = await outbox.call(lambda tx: tx.write_pending(items, "1.0.3"))
    await outbox.call(MarkReady(seqs, targets))  # the request path's own operation


async def start(outbox: Outbox, target: str) -> LiveStart:
    return await outbox.call(lambda tx: tx.live_start(target))


async def claim(
    outbox: Outbox,
    holder: str,
    since: str | None = SINCE,
    until: str = UNTIL,
    *,
    target: str = "a",
    restart: bool = False,
) -> BackfillState:
    return await outbox.call(
        lambda tx: tx.claim_backfill(
            target, holder, since, until, stale_after=STALE, restart=restart
        )
    )


async def page(outbox: Outbox, holder: str, items: Sequence[Item], progress: BackfillState) -> bool:
    return await outbox.call(lambda tx: tx.backfill_page(progress.target, holder, items, progress))


async def finish(outbox: Outbox, holder: str, target: str = "a") -> bool:
    return await outbox.call(lambda tx: tx.finish_backfill(target, holder))


async def current(outbox: Outbox, target: str = "a") -> BackfillState | None:
    return await outbox.call(lambda tx: tx.backfill(target))


async def backlog_of(outbox: Outbox, target: str) -> int:
    return await outbox.call(lambda tx: tx.backlog_of(target))


# -- when live forwarding began ---------------------------------------------------------


async def test_went_live_keeps_the_first_moment_of_each_target(backend: Backend) -> None:
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        assert await start(outbox, "a") == LiveStart(False, None, frozenset())
        await outbox.call(lambda tx: tx.went_live(["a"]))
        clock.advance(50)
        await outbox.call(lambda tx: tx.went_live(["a", "b", "b"]))
        assert await start(outbox, "a") == LiveStart(True, T0, frozenset())
        assert await start(outbox, "b") == LiveStart(True, T0 + 50, frozenset())
    clock.advance(1000)
    async with backend.opened(clock) as restarted:  # a restart goes live again: kept
        await restarted.call(lambda tx: tx.went_live(["a", "b"]))
        assert (await start(restarted, "a")).since == T0
        assert (await start(restarted, "b")).since == T0 + 50


async def test_a_process_opened_after_a_target_went_live_keeps_its_window_ids(
    backend: Backend,
) -> None:
    """The CLI, or a gateway started again within the window: it knows the moment."""
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as gateway:
        await gateway.call(lambda tx: tx.went_live(["a"]))
        clock.advance(5)
        async with backend.opened(clock) as other:
            await live(other, ["from-other"], [("a", 100)])
        assert (await start(gateway, "a")).window_ids == frozenset({"from-other"})


async def test_mark_ready_keeps_the_ids_of_a_live_targets_first_moments_only(
    backend: Backend,
) -> None:
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        await live(outbox, ["Before-1"], [("a", 100)])  # before it went live: not kept
        await outbox.call(lambda tx: tx.went_live(["a"]))
        clock.advance(10)
        # Ids are kept lower-cased, for "a" (live) only, "b" never went live here.
        await live(outbox, ["ID-One", "id-two"], [("a", 100), ("b", 100)])
        # Past a's backlog_limit: dead-lettered (backlog full), its id kept all the same.
        await live(outbox, ["full-1", "full-2"], [("a", 4)])
        stats = (await outbox.call(lambda tx: tx.stats(["a"])))["a"]
        assert (stats.backlog, stats.dead_letters) == (4, 1)
        clock.advance(LIVE_WINDOW - 11)  # the window's last second
        await live(outbox, ["last", "id-two", "LAST"], [("a", 100)])  # duplicates: kept once
        clock.advance(1)  # LIVE_WINDOW seconds after going live: closed
        await live(outbox, ["after-1"], [("a", 100), ("b", 100)])
        clock.advance(3600)
        await live(outbox, ["after-2"], [("a", 100)])
        assert await start(outbox, "a") == LiveStart(
            True, T0, frozenset({"id-one", "id-two", "full-1", "full-2", "last"})
        )
        assert await start(outbox, "b") == LiveStart(False, None, frozenset())


@pytest.mark.postgres
async def test_a_replica_reads_the_moment_another_went_live_at(postgres: PostgresServer) -> None:
    """The window is the first replica's: one going live later reads it back (PostgreSQL
    alone: one gateway process at a time has a SQLite outbox)."""
    backend = PostgresBackend(await asyncio.to_thread(postgres.new_database))
    first, second = ManualClock(start=T0), ManualClock(start=T0)
    async with backend.opened(first) as one, backend.opened(second) as two:
        await one.call(lambda tx: tx.went_live(["a"]))
        second.advance(100)  # two opened before one went live: nothing known of it
        await two.call(lambda tx: tx.went_live(["a"]))
        assert (await start(two, "a")).since == T0
        await live(two, ["in-window"], [("a", 100)])
        second.advance(LIVE_WINDOW - 100)  # past one's window, though two's is younger
        await live(two, ["past-window"], [("a", 100)])
        assert (await start(one, "a")).window_ids == frozenset({"in-window"})


async def test_the_migration_gives_the_targets_known_before_an_unknown_moment(
    backend: Backend,
) -> None:
    """SQLite: a file at user_version 3, made by the first three migrations; PostgreSQL: a
    database migrated to version 7 by the gateway's own `migrate`. Both with a target in
    each table that names targets, then opened by this version (which migrates them)."""
    await backend.make_legacy()
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        for target in KNOWN:
            assert await start(outbox, target) == LiveStart(True, None, frozenset()), target
        assert await start(outbox, "new") == LiveStart(False, None, frozenset())
        assert set(KNOWN) <= set(await outbox.call(lambda tx: tx.targets()))
        # Going live again leaves the moment unknown (the first is kept: it was earlier).
        await outbox.call(lambda tx: tx.went_live(["in-deliveries", "new"]))
        assert (await start(outbox, "in-deliveries")).since is None
        assert (await start(outbox, "new")).since == T0
        await live(outbox, ["x"], [("in-deliveries", 100), ("new", 100)])
        assert (await start(outbox, "in-deliveries")).window_ids == frozenset()
        assert (await start(outbox, "new")).window_ids == frozenset({"x"})


# -- holding a backfill -----------------------------------------------------------------


async def test_claim_resume_busy_stale_takeover_restart_and_finish(backend: Backend) -> None:
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        assert await current(outbox) is None
        fresh = await claim(outbox, "h1")
        assert fresh == BackfillState(
            target="a",
            since=SINCE,
            until=UNTIL,
            cursor=None,
            tie_ids=(),
            first=None,
            queued=0,
            skipped=0,
            state="running",
            started_at=T0,
            updated_at=T0,
            finished_at=None,
            holder="h1",
        )
        assert await current(outbox) == fresh
        clock.advance(5)
        moved = dataclasses.replace(
            fresh,
            cursor="2024-01-10T00:00:00+00:00",
            tie_ids=("h-1", "h-0"),
            first="2024-01-02T00:00:00+00:00",
            queued=2,
            skipped=1,
        )
        assert await page(outbox, "h1", history(2), moved)

        clock.advance(10)
        with pytest.raises(BackfillBusy):  # h1's last page was 10 s ago
            await claim(outbox, "h2")
        # Its own holder resumes it, with its own range and progress (not the one asked).
        resumed = await claim(outbox, "h1", None, "2030-01-01T00:00:00+00:00")
        expected = dataclasses.replace(moved, updated_at=T0 + 15)
        assert resumed == expected
        assert await current(outbox) == expected

        clock.advance(30)
        assert await outbox.call(lambda tx: tx.beat_backfill("a", "h1"))
        assert (await current(outbox) or fresh).updated_at == T0 + 45
        clock.advance(STALE - 1)
        with pytest.raises(BackfillBusy):  # the heartbeat keeps it
            await claim(outbox, "h2")
        clock.advance(1)  # STALE seconds without a page or heartbeat: interrupted
        taken = await claim(outbox, "h2", "2023-01-01T00:00:00+00:00", UNTIL)
        assert taken == dataclasses.replace(moved, updated_at=T0 + 45 + STALE, holder="h2")

        # h1 lost it: its heartbeat and its finish say so, and change nothing.
        assert not await outbox.call(lambda tx: tx.beat_backfill("a", "h1"))
        assert not await outbox.call(lambda tx: tx.finish_backfill("a", "h1"))
        assert await current(outbox) == taken

        with pytest.raises(BackfillBusy):  # a restart waits for a live holder too
            await claim(outbox, "h3", None, UNTIL, restart=True)
        clock.advance(STALE)
        restarted = await claim(outbox, "h3", None, "2024-02-01T00:00:00+00:00", restart=True)
        assert restarted == BackfillState(
            target="a",
            since=None,
            until="2024-02-01T00:00:00+00:00",
            cursor=None,
            tie_ids=(),
            first=None,
            queued=0,
            skipped=0,
            state="running",
            started_at=clock.now(),
            updated_at=clock.now(),
            holder="h3",
        )

        clock.advance(7)
        assert await outbox.call(lambda tx: tx.finish_backfill("a", "h3"))
        done = await current(outbox)
        assert done == dataclasses.replace(
            restarted,
            state="done",
            updated_at=clock.now(),
            finished_at=clock.now(),
            holder=None,
        )
        assert done is not None
        assert done.fraction == 1.0
        assert not await outbox.call(lambda tx: tx.beat_backfill("a", "h3"))  # done: held by none
        assert not await page(outbox, "h3", history(1, "late"), done)

        # A done backfill is replaced by the next claim (no restart needed, nothing busy).
        clock.advance(1)
        again = await claim(outbox, "h4", SINCE, UNTIL)
        assert (again.state, again.holder, again.started_at, again.queued, again.since) == (
            "running",
            "h4",
            clock.now(),
            0,
            SINCE,
        )
        assert again.finished_at is None


async def test_two_runs_claiming_at_once_one_holds_the_other_is_busy(backend: Backend) -> None:
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as one, backend.opened(clock) as two:
        for round_ in range(3):  # a new backfill each time (none yet, then done ones)
            results = await asyncio.gather(
                claim(one, f"one-{round_}"), claim(two, f"two-{round_}"), return_exceptions=True
            )
            won = [r for r in results if isinstance(r, BackfillState)]
            assert len(won) == 1, results
            assert sum(isinstance(r, BackfillBusy) for r in results) == 1, results
            holder = won[0].holder
            assert holder is not None
            assert (await current(one)) == won[0]
            assert await finish(one, holder)
            clock.advance(1)


# -- queueing history -------------------------------------------------------------------


async def test_a_page_queues_history_for_its_target_counted_in_every_backlog(
    backend: Backend,
) -> None:
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        await live(outbox, ["live-1", "live-2"], [("a", 1000), ("b", 1000)])
        held = await claim(outbox, "h1")
        clock.advance(3)
        items = history(3)
        progress = dataclasses.replace(
            held,
            cursor="2024-01-05T00:00:00+00:00",
            tie_ids=("h-2",),
            first="2024-01-01T01:00:00+00:00",
            queued=3,
            skipped=2,
        )
        assert await page(outbox, "h1", items, progress)
        state = await current(outbox)
        assert state == dataclasses.replace(progress, updated_at=T0 + 3)
        assert state is not None
        assert 0.0 < state.fraction < 1.0

        # For "a" only, after its live statements, each as storage gave it.
        assert outbox.backlog["a"] == 5
        assert outbox.backlog["b"] == 2
        assert await backlog_of(outbox, "a") == 5
        assert await backlog_of(outbox, "b") == 2
        assert await backlog_of(outbox, "never") == 0
        stats = await outbox.call(lambda tx: tx.stats(["a", "b"]))
        assert (stats["a"].backlog, stats["a"].backfilled, stats["a"].backfill) == (
            5,
            3,
            state.shown(),
        )
        assert (stats["b"].backlog, stats["b"].backfilled, stats["b"].backfill) == (2, 0, None)
        claimed = await outbox.call(lambda tx: tx.claim("a", 10))
        assert [(c.body, c.attachments, c.version, c.attempts) for c in claimed] == [
            (b'{"id":"live-1"}', None, "1.0.3", 0),
            (b'{"id":"live-2"}', None, "1.0.3", 0),
            *((body, parts, version, 0) for _, body, parts, version in items),
        ]
        assert [c.body for c in await outbox.call(lambda tx: tx.claim("b", 10))] == [
            b'{"id":"live-1"}',
            b'{"id":"live-2"}',
        ]

        # Delivered: the backlog goes down by them; what was backfilled stays counted.
        backfilled = [c.seq for c in claimed[2:]]
        await outbox.call(lambda tx: tx.ack("a", backfilled))
        assert await backlog_of(outbox, "a") == 2
        assert outbox.backlog["a"] == 2
        stats = await outbox.call(lambda tx: tx.stats(["a"]))
        assert (stats["a"].backlog, stats["a"].backfilled, stats["a"].delivered) == (2, 3, 3)

        # A second page adds to the counter; an empty one moves the cursor alone.
        more = dataclasses.replace(progress, cursor="2024-02-01T00:00:00+00:00", queued=4)
        assert await page(outbox, "h1", history(1, "more"), more)
        last = dataclasses.replace(more, cursor=UNTIL, tie_ids=())
        assert await page(outbox, "h1", [], last)
        assert (await current(outbox) or held).cursor == UNTIL
        assert await outbox.call(lambda tx: tx.finish_backfill("a", "h1"))
        stats = await outbox.call(lambda tx: tx.stats(["a"]))
        assert (stats["a"].backlog, stats["a"].backfilled) == (3, 4)
        assert stats["a"].backfill is not None
        assert stats["a"].backfill.state == "done"


async def test_a_target_known_by_its_backfill_alone_is_listed(backend: Backend) -> None:
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        await live(outbox, ["x"], [("a", 100)])
        assert await outbox.call(lambda tx: tx.targets()) == ["a"]
        state = await claim(outbox, "h1", target="fresh")
        assert await outbox.call(lambda tx: tx.targets()) == ["a", "fresh"]
        stats = await outbox.call(lambda tx: tx.stats(["fresh"]))
        assert (stats["fresh"].backlog, stats["fresh"].backfilled) == (0, 0)
        assert stats["fresh"].backfill == state.shown()


async def test_a_holder_that_lost_the_backfill_queues_nothing(backend: Backend) -> None:
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as gateway, backend.opened(clock) as cli:
        await live(gateway, ["live-1"], [("a", 1000)])
        first = await claim(cli, "h1")
        clock.advance(STALE)
        second = await claim(gateway, "h2")  # h1 went quiet: taken over
        progress = dataclasses.replace(first, cursor="2024-02-01T00:00:00+00:00", queued=5)
        assert not await page(cli, "h1", history(5), progress)
        assert not await page(cli, "nobody", history(5), dataclasses.replace(progress, target="b"))
        assert (cli.backlog.get("a", 0), cli.backlog.get("b", 0)) == (0, 0)  # it queued none
        assert await current(cli) == second  # the cursor did not move
        assert await current(cli, "b") is None
        assert (await backlog_of(cli, "a"), await backlog_of(gateway, "a")) == (1, 1)
        stats = await gateway.call(lambda tx: tx.stats(["a", "b"]))
        assert (stats["a"].backlog, stats["a"].backfilled) == (1, 0)
        assert (stats["b"].backlog, stats["b"].backfilled) == (0, 0)
        assert [c.body for c in await gateway.call(lambda tx: tx.claim("a", 10))] == [
            b'{"id":"live-1"}'
        ]


async def test_a_page_that_fails_queues_nothing_and_keeps_the_cursor(backend: Backend) -> None:
    """Both or neither: a page whose last statement cannot be stored leaves no trace."""
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        held = await claim(outbox, "h1")
        items = [*history(2), ("broken", cast(bytes, None), None, "1.0.3")]
        progress = dataclasses.replace(held, cursor="2024-02-01T00:00:00+00:00", queued=3)
        with pytest.raises((sqlite3.IntegrityError, asyncpg.NotNullViolationError)):
            await page(outbox, "h1", items, progress)
        assert await current(outbox) == held
        assert await backlog_of(outbox, "a") == 0
        assert outbox.backlog.get("a", 0) == 0
        assert await outbox.call(lambda tx: tx.claim("a", 10)) == []
        stats = await outbox.call(lambda tx: tx.stats(["a"]))
        assert (stats["a"].backlog, stats["a"].backfilled) == (0, 0)
        # The outbox goes on: the same page without the broken statement goes in.
        assert await page(outbox, "h1", items[:2], dataclasses.replace(progress, queued=2))
        assert await backlog_of(outbox, "a") == 2


async def test_backlog_of_counts_what_another_process_queued(backend: Backend) -> None:
    """The backfill waits for room by it: the gateway's deliveries and its own, counted."""
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as gateway, backend.opened(clock) as cli:
        await live(gateway, ["live-1", "live-2"], [("a", 1000)])
        held = await claim(cli, "h1")
        assert await page(cli, "h1", history(3), dataclasses.replace(held, queued=3))
        assert await backlog_of(gateway, "a") == 5
        assert await backlog_of(cli, "a") == 5
        claimed = await gateway.call(lambda tx: tx.claim("a", 3))
        await gateway.call(lambda tx: tx.dead_letter("a", [claimed[0].seq], "HTTP 400"))
        await gateway.call(lambda tx: tx.ack("a", [c.seq for c in claimed[1:]]))
        assert await backlog_of(cli, "a") == 2
        stats = await cli.call(lambda tx: tx.stats(["a"]))
        assert (stats["a"].backlog, stats["a"].backfilled) == (2, 3)


async def test_operations_in_one_commit_see_each_other(backend: Backend) -> None:
    """A backfill's steps may share a transaction with others: went_live, then mark_ready
    in the same commit keeps the ids; a page then backlog_of counts it."""
    clock = ManualClock(start=T0)
    async with backend.opened(clock) as outbox:
        items = [("same-tx", b"{}", None)]
        seqs = await outbox.call(lambda tx: tx.write_pending(items))

        async def go_live_then_queue(tx: OutboxTransaction) -> None:
            await tx.went_live(["a"])
            await tx.mark_ready(seqs, [("a", 100)])

        await outbox.call(go_live_then_queue)
        assert (await start(outbox, "a")).window_ids == frozenset({"same-tx"})
        held = await claim(outbox, "h1")

        async def page_then_count(tx: OutboxTransaction) -> int:
            assert await tx.backfill_page("a", "h1", history(2), held)
            return await tx.backlog_of("a")

        assert await outbox.call(page_then_count) == 3
        assert outbox.backlog["a"] == 3
