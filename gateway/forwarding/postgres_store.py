"""The outbox's operations on PostgreSQL, shared by every replica (asyncpg).

The same rows and meanings as the SQLite outbox (gateway.forwarding.store), plus a lease
on each delivery: a replica claims a batch for `lease` seconds (renewed while it still
works on it) with `FOR UPDATE SKIP LOCKED`, so two replicas never send the same statement
at the same time, and the claims of a replica that died end with their lease. Leases are
timed by the database's clock, which every replica shares (their own clocks may differ).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from gateway.clock import Clock
from gateway.forwarding.store import (
    BACKFILL_COLUMNS,
    BACKLOG_FULL,
    LIVE_WINDOW,
    BackfillBusy,
    BackfillState,
    Claimed,
    LiveStart,
    OutboxRows,
    TargetState,
    TargetStats,
    backfill_of,
)

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

__all__ = [
    "PostgresTransaction",
    "count_backlogs",
    "live_origins",
    "outbox_id",
    "restore_rows",
]

_PENDING, _READY = 0, 1
_DB_NOW = "extract(epoch FROM clock_timestamp())"
# Targets with deliveries, one index probe each (PostgreSQL has no skip scan to do it).
_DELIVERY_TARGETS = """
    WITH RECURSIVE t AS (
        (SELECT target FROM outbox_deliveries ORDER BY target LIMIT 1)
        UNION ALL
        SELECT (SELECT d.target FROM outbox_deliveries d WHERE d.target > t.target
                ORDER BY d.target LIMIT 1)
        FROM t WHERE t.target IS NOT NULL
    )
    SELECT target FROM t WHERE target IS NOT NULL
"""
_ALL_TARGETS = f"""
    {_DELIVERY_TARGETS}
    UNION SELECT DISTINCT target FROM outbox_dead_letters
    UNION SELECT DISTINCT target FROM outbox_counters
    UNION SELECT target FROM outbox_target_states
    UNION SELECT target FROM outbox_backfills
"""  # noqa: S608  (constants only)


async def outbox_id(conn: Connection) -> str:
    """The outbox's stable id (the `outbox` label of its metrics)."""
    value = await conn.fetchval("SELECT value FROM shared_keys WHERE name = 'outbox-id'")
    return bytes(value).decode("ascii")


async def count_backlogs(conn: Connection) -> dict[str, int]:
    """Deliveries queued per target: what was queued less what left, from the counters.

    Exact (both move in the transaction that moves a delivery) and cheap at any backlog;
    counting the deliveries themselves would read them all.
    """
    rows = await conn.fetch(
        "SELECT target, sum(CASE name WHEN 'queued' THEN value ELSE -value END) "
        "FROM outbox_counters WHERE name IN ('queued', 'left') GROUP BY target"
    )
    return {target: int(count) for target, count in rows}


async def live_origins(conn: Connection) -> dict[str, float | None]:
    """When live forwarding to each target began (None: before the outbox kept it)."""
    rows = await conn.fetch("SELECT target, since FROM outbox_live_origins")
    return {row[0]: row[1] for row in rows}


# One statement per operation: a group commit is mostly round trips. Each keeps its
# counters in the same statement (`queued`, `left`: the backlog; `delivered`, ...).
_BUMP = """
    INSERT INTO outbox_counters (target, name, owner, value)
    SELECT target, {name}, $OWNER, count(*) FROM {source} GROUP BY target
    ON CONFLICT (target, name, owner)
    DO UPDATE SET value = outbox_counters.value + excluded.value
"""


def _bump(name: str, source: str, owner: str) -> str:
    return _BUMP.format(name=f"'{name}'", source=source).replace("$OWNER", owner)


_LEAVING = frozenset({"delivered", "dead_letters", "filtered", "skipped_signed"})
_COUNT = """
    INSERT INTO outbox_counters (target, name, owner, value)
    SELECT target, $3, $4, value FROM unnest($1::text[], $2::bigint[]) AS c(target, value)
    ON CONFLICT (target, name, owner)
    DO UPDATE SET value = outbox_counters.value + excluded.value
"""
_MARK_READY = """
    WITH ready AS (
        UPDATE outbox_statements SET state = 1
        WHERE state = 0 AND seq = ANY($1::bigint[]) RETURNING seq{ready_ids}
    ), ranked AS (
        SELECT seq, row_number() OVER (ORDER BY seq) AS n FROM ready
    ), plan AS (
        SELECT t.target, r.seq, r.n <= t.room AS fits
        FROM ranked r CROSS JOIN unnest($2::text[], $3::bigint[]) AS t(target, room)
    ), queued AS (
        INSERT INTO outbox_deliveries (target, seq)
        SELECT target, seq FROM plan WHERE fits
        ON CONFLICT DO NOTHING RETURNING target
    ), dead AS (
        INSERT INTO outbox_dead_letters (target, seq, reason, transient, failed_at)
        SELECT target, seq, $4, false, $5 FROM plan WHERE NOT fits
        ON CONFLICT (target, seq) DO UPDATE SET reason = excluded.reason,
            transient = false, failed_at = excluded.failed_at
        RETURNING target
    ), counted_queued AS ({counted_queued}
    ), counted_dead AS ({counted_dead}){window}
    SELECT target, count(*) FROM dead GROUP BY target
"""
# In a target's first LIVE_WINDOW seconds, the ids queued for it (and dead-lettered for a
# full backlog) are kept too: $7, the targets whose window is open (see went_live).
_LIVE_WINDOW_IDS = """, windowed AS (
        INSERT INTO outbox_live_window (target, statement_id)
        SELECT w.target, lower(r.statement_id)
        FROM ready r CROSS JOIN unnest($7::text[]) AS w(target)
        ON CONFLICT DO NOTHING
    )"""
_MARK_READY_PARTS = {
    "counted_queued": _bump("queued", "queued", "$6"),
    "counted_dead": _bump("dead_letters", "dead", "$6"),
}
# Past the window (almost always) the statement is as it was before windows were kept.
_MARK_READY_QUEUE = _MARK_READY.format(ready_ids="", window="", **_MARK_READY_PARTS)
_MARK_READY_LIVE = _MARK_READY.format(
    ready_ids=", statement_id", window=_LIVE_WINDOW_IDS, **_MARK_READY_PARTS
)
_REQUEUE = f"""
    WITH picked AS (
        DELETE FROM outbox_dead_letters WHERE (target, seq) IN (
            SELECT target, seq FROM outbox_dead_letters WHERE target = $1
            AND ($2 OR transient) ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING seq
    ), queued AS (
        INSERT INTO outbox_deliveries (target, seq) SELECT $1, seq FROM picked
        ON CONFLICT DO NOTHING RETURNING target
    ), counted AS ({_bump("queued", "queued", "$4")})
    SELECT count(*) FROM queued
"""  # noqa: S608  (constants only)
# The last target to get a statement deletes it (the deliveries of other targets, and
# dead letters, keep it); rows another transaction holds are skipped, never waited for.
_LEAVE = """
    WITH gone AS (
        DELETE FROM outbox_deliveries WHERE target = $1 AND seq = ANY($2::bigint[])
        RETURNING target, seq
    ), done AS (
        DELETE FROM outbox_statements WHERE seq IN (
            SELECT s.seq FROM outbox_statements s JOIN gone g ON g.seq = s.seq
            WHERE s.state = 1
            AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d
                            WHERE d.seq = s.seq AND d.target <> $1)
            AND NOT EXISTS (SELECT 1 FROM outbox_dead_letters x WHERE x.seq = s.seq)
            FOR UPDATE OF s SKIP LOCKED)
    ), counted_left AS ({left}
    ), counted_as AS ({named})
    SELECT count(*) FROM gone
"""


async def restore_rows(
    conn: Connection, rows: OutboxRows, *, owner: str, tenant: str | None = None
) -> int:
    """Insert another outbox's rows (new sequence numbers, same order); how many statements."""
    statements = rows.statements
    new = await conn.fetch(
        "INSERT INTO outbox_statements "
        "(statement_id, body, attachments, version, state, created, tenant) "
        "SELECT i, b, a, v, st, c, $7 FROM unnest($1::text[], $2::bytea[], $3::bytea[], "
        "$4::text[], $5::smallint[], $6::float8[]) WITH ORDINALITY AS u(i, b, a, v, st, c, n) "
        "ORDER BY n RETURNING seq",
        [row[1] for row in statements],
        [row[2] for row in statements],
        [row[3] for row in statements],
        [row[4] for row in statements],
        [row[5] for row in statements],
        [row[6] for row in statements],
        tenant,
    )
    seq_of = dict(zip((row[0] for row in statements), sorted(r[0] for r in new), strict=True))
    await conn.executemany(
        "INSERT INTO outbox_deliveries (target, seq, attempts, next_attempt, last_error) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(t, seq_of[seq], attempts, at, error) for t, seq, attempts, at, error in rows.deliveries],
    )
    queued = Counter(target for target, *_ in rows.deliveries)
    rows = dataclasses.replace(
        rows, counters=[*rows.counters, *((t, "queued", n) for t, n in queued.items())]
    )
    await conn.executemany(
        "INSERT INTO outbox_dead_letters (target, seq, reason, transient, failed_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [
            (t, seq_of[seq], reason, transient, at)
            for t, seq, reason, transient, at in rows.dead_letters
        ],
    )
    await conn.executemany(
        "INSERT INTO outbox_target_states (target, up, since, reason) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        rows.states,
    )
    await conn.executemany(
        "INSERT INTO outbox_counters (target, name, owner, value) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (target, name, owner) "
        "DO UPDATE SET value = outbox_counters.value + excluded.value",
        [(target, name, owner, value) for target, name, value in rows.counters],
    )
    # The earliest moment each target went live; unknown (NULL) wins over any moment.
    await conn.executemany(
        "INSERT INTO outbox_live_origins AS o (target, since) VALUES ($1, $2) "
        "ON CONFLICT (target) DO UPDATE SET since = CASE WHEN o.since IS NULL OR "
        "excluded.since IS NULL THEN NULL ELSE least(o.since, excluded.since) END",
        rows.origins,
    )
    await conn.executemany(
        "INSERT INTO outbox_live_window (target, statement_id) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING",
        rows.window,
    )
    return len(statements)


class PostgresTransaction:
    """`OutboxTransaction` on one PostgreSQL connection inside an open transaction.

    `owner` names this process's run (its claims and counters); `backlog` is the outbox's
    estimate of each target's queue, read for `backlog_limit` (exact counts would make
    every write count a table).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        owner: str,
        counters_owner: str | None = None,
        lease: float,
        clock: Clock,
        backlog: dict[str, int],
        origins: dict[str, float | None] | None = None,
        tenant: str | None = None,
        sweep_due: bool = True,
    ) -> None:
        self.conn = conn
        self._owner = owner
        self._counters_owner = counters_owner or owner
        self._lease = lease
        self._clock = clock
        self._backlog = backlog
        self._origins = origins if origins is not None else {}  # the outbox's, as it read them
        self._tenant = tenant  # its pending rows are this tenant's to settle
        self.queued: dict[str, int] = {}  # deliveries this transaction added (or removed)
        self.counted: dict[str, int] | None = None  # backlogs counted in this transaction
        self.recounted: dict[str, int] = {}  # a target's backlog counted (backlog_of)
        self.went: dict[str, float | None] = {}  # origins went_live read back
        self.overflowed: set[str] = set()  # targets whose backlog_limit refused statements
        self.sweep_due = sweep_due
        self.swept = False  # collect_garbage swept in this transaction

    def _moved(self, target: str, by: int) -> None:
        self.queued[target] = self.queued.get(target, 0) + by

    async def _bump(self, target: str, name: str, by: int) -> None:
        if by:
            await self.conn.execute(
                "INSERT INTO outbox_counters (target, name, owner, value) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (target, name, owner) "
                "DO UPDATE SET value = outbox_counters.value + excluded.value",
                target,
                name,
                self._counters_owner,
                by,
            )

    # -- the write path -----------------------------------------------------------------

    async def write_pending(
        self, items: Sequence[tuple[str, bytes, bytes | None]], version: str | None = None
    ) -> list[int]:
        """See OutboxTransaction."""
        return await self.write_pending_rows([(item, version) for item in items])

    async def write_pending_batches(
        self, batches: Sequence[tuple[Sequence[tuple[str, bytes, bytes | None]], str | None]]
    ) -> list[list[int]]:
        """Several write_pending in one statement: the seqs of each, in order."""
        rows = [(item, version) for items, version in batches for item in items]
        seqs = await self.write_pending_rows(rows)
        found, start = [], 0
        for items, _ in batches:
            found.append(seqs[start : start + len(items)])
            start += len(items)
        return found

    async def write_pending_rows(
        self, rows: Sequence[tuple[tuple[str, bytes, bytes | None], str | None]]
    ) -> list[int]:
        """Insert pending rows ((id, bytes, parts), version) in order; their seqs."""
        inserted = await self.conn.fetch(
            "INSERT INTO outbox_statements "
            "(statement_id, body, attachments, version, state, created, tenant) "
            "SELECT i, b, a, v, $5, $6, $7 FROM unnest($1::text[], $2::bytea[], $3::bytea[], "
            "$4::text[]) WITH ORDINALITY AS u(i, b, a, v, n) ORDER BY n RETURNING seq",
            [item[0] for item, _ in rows],
            [item[1] for item, _ in rows],
            [item[2] for item, _ in rows],
            [version for _, version in rows],
            _PENDING,
            self._clock.now(),
            self._tenant,
        )
        # A sequence hands out numbers in the order rows are inserted (ORDER BY n).
        return sorted(row[0] for row in inserted)

    async def mark_ready(self, seqs: Sequence[int], targets: Sequence[tuple[str, int]]) -> None:
        """See OutboxTransaction (past `backlog_limit`, as the estimate tells it).

        In a target's first LIVE_WINDOW seconds live, the ids it gets are kept too (as the
        outbox's origins, and this transaction's went_live, tell it).
        """
        if not seqs:
            return
        rooms = [
            max(0, limit - self._backlog.get(target, 0) - self.queued.get(target, 0))
            for target, limit in targets
        ]
        now = self._clock.now()
        opening = [target for target, _ in targets if self._opening(target, now)]
        arguments = [
            list(seqs),
            [target for target, _ in targets],
            rooms,
            BACKLOG_FULL,
            now,
            self._counters_owner,
        ]
        if opening:
            overflow = await self.conn.fetch(_MARK_READY_LIVE, *arguments, opening)
        else:
            overflow = await self.conn.fetch(_MARK_READY_QUEUE, *arguments)
        for (target, _), room in zip(targets, rooms, strict=True):
            self._moved(target, min(room, len(seqs)))
        self.overflowed.update(row[0] for row in overflow)

    def _opening(self, target: str, now: float) -> bool:
        """Whether `target` went live less than LIVE_WINDOW seconds ago."""
        since = self.went[target] if target in self.went else self._origins.get(target)
        return since is not None and now < since + LIVE_WINDOW

    async def went_live(self, targets: Sequence[str]) -> None:
        """See OutboxTransaction: the moment kept is read back (another replica's, maybe)."""
        names = sorted(set(targets))
        if not names:
            return
        await self.conn.execute(
            "INSERT INTO outbox_live_origins (target, since) "
            "SELECT t, $2 FROM unnest($1::text[]) AS t ON CONFLICT DO NOTHING",
            names,
            self._clock.now(),
        )
        # A statement of its own: it sees a row another replica committed while this one
        # waited on it (the INSERT's snapshot would not).
        rows = await self.conn.fetch(
            "SELECT target, since FROM outbox_live_origins WHERE target = ANY($1::text[])",
            names,
        )
        self.went.update((row[0], row[1]) for row in rows)

    async def live_start(self, target: str) -> LiveStart:
        """See OutboxTransaction."""
        row = await self.conn.fetchrow(
            "SELECT since, array(SELECT statement_id FROM outbox_live_window w "
            "WHERE w.target = o.target) FROM outbox_live_origins o WHERE target = $1",
            target,
        )
        if row is None:
            return LiveStart(known=False, since=None, window_ids=frozenset())
        return LiveStart(known=True, since=row[0], window_ids=frozenset(row[1]))

    async def drop(self, seqs: Sequence[int]) -> None:
        """See OutboxTransaction."""
        if seqs:
            await self.conn.execute(
                "DELETE FROM outbox_statements WHERE state = $1 AND seq = ANY($2::bigint[])",
                _PENDING,
                list(seqs),
            )

    async def pending(self, created_before: float, limit: int = 500) -> list[tuple[int, str]]:
        """See OutboxTransaction."""
        rows = await self.conn.fetch(
            "SELECT seq, statement_id FROM outbox_statements WHERE state = $1 AND created < $2 "
            "AND tenant IS NOT DISTINCT FROM $4 ORDER BY created LIMIT $3",
            _PENDING,
            created_before,
            limit,
            self._tenant,
        )
        return [(row[0], row[1]) for row in rows]

    # -- the delivery path --------------------------------------------------------------

    async def claim(self, target: str, limit: int) -> list[Claimed]:
        """The oldest deliveries of `target` no other replica holds, leased to this one."""
        rows = await self.conn.fetch(
            f"""
            WITH free AS (
                SELECT seq FROM outbox_deliveries
                WHERE target = $1
                  AND (lease_until IS NULL OR lease_until < {_DB_NOW} OR lease_owner = $3)
                ORDER BY seq LIMIT $2
                FOR UPDATE SKIP LOCKED
            ), leased AS (
                UPDATE outbox_deliveries d
                SET lease_owner = $3, lease_until = {_DB_NOW} + $4
                FROM free WHERE d.target = $1 AND d.seq = free.seq
                RETURNING d.seq, d.attempts
            )
            SELECT leased.seq, s.body, leased.attempts, s.attachments, s.version
            FROM leased JOIN outbox_statements s ON s.seq = leased.seq
            ORDER BY leased.seq
            """,  # noqa: S608  (a constant expression, no input)
            target,
            limit,
            self._owner,
            self._lease,
        )
        return [
            Claimed(
                seq,
                bytes(body),
                attempts,
                None if parts is None else bytes(parts),
                version,
            )
            for seq, body, attempts, parts, version in rows
        ]

    async def renew(self, target: str, seqs: Sequence[int]) -> int:
        """Extend this replica's lease on deliveries it still works on; how many it holds."""
        held = await self.conn.execute(
            f"UPDATE outbox_deliveries SET lease_until = {_DB_NOW} + $1 "  # noqa: S608
            "WHERE target = $2 AND seq = ANY($3::bigint[]) AND lease_owner = $4",
            self._lease,
            target,
            list(seqs),
            self._owner,
        )
        return int(held.rsplit(" ", 1)[-1])

    async def _leave(self, target: str, seqs: Sequence[int], counter: str) -> int:
        """Deliveries leave the queue (delivered, or dead-lettered); how many did."""
        # Written into the statement: one of the gateway's own names, never input.
        assert counter in _LEAVING or not counter, counter
        left = await self.conn.fetchval(
            _LEAVE.format(
                left=_bump("left", "gone", "$3"),
                named=_bump(counter, "gone", "$3") if counter else "SELECT 1",
            ),
            target,
            list(seqs),
            self._counters_owner,
        )
        self._moved(target, -int(left))
        return int(left)

    async def ack(self, target: str, seqs: Sequence[int], *, counter: str = "delivered") -> None:
        """See OutboxTransaction."""
        await self._leave(target, seqs, counter)

    async def count(self, counter: str, counts: Sequence[tuple[str, int]]) -> None:
        """See OutboxTransaction."""
        counted = [(target, count) for target, count in counts if count]
        if counted:
            await self.conn.execute(
                _COUNT,
                [target for target, _ in counted],
                [count for _, count in counted],
                counter,
                self._counters_owner,
            )

    async def retry(
        self, target: str, seqs: Sequence[int], next_attempt: float, error: str
    ) -> None:
        """See OutboxTransaction; the lease ends (any replica may try them next)."""
        await self.conn.execute(
            "UPDATE outbox_deliveries SET attempts = attempts + 1, next_attempt = $1, "
            "last_error = $2, lease_owner = NULL, lease_until = NULL "
            "WHERE target = $3 AND seq = ANY($4::bigint[])",
            next_attempt,
            error,
            target,
            list(seqs),
        )
        await self._bump(target, "retries", len(seqs))

    async def _dead(self, target: str, seqs: Sequence[int], reason: str) -> None:
        await self.conn.execute(
            "INSERT INTO outbox_dead_letters (target, seq, reason, transient, failed_at) "
            "SELECT $1, s, $2, false, $3 FROM unnest($4::bigint[]) AS s "
            "ON CONFLICT (target, seq) DO UPDATE SET reason = excluded.reason, "
            "transient = false, failed_at = excluded.failed_at",
            target,
            reason,
            self._clock.now(),
            list(seqs),
        )
        await self._bump(target, "dead_letters", len(seqs))

    async def dead_letter(self, target: str, seqs: Sequence[int], reason: str) -> None:
        """See OutboxTransaction."""
        # The dead letter first: leaving, the statement would be collected without it.
        await self._dead(target, seqs, reason)
        await self._leave(target, seqs, "")

    async def set_state(self, target: str, state: TargetState) -> None:
        """See OutboxTransaction."""
        await self.conn.execute(
            "INSERT INTO outbox_target_states (target, up, since, reason) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (target) DO UPDATE SET up = excluded.up, "
            "since = excluded.since, reason = excluded.reason",
            target,
            state.up,
            state.since or self._clock.now(),
            state.reason,
        )

    async def target_state(self, target: str) -> TargetState:
        """See OutboxTransaction."""
        row = await self.conn.fetchrow(
            "SELECT up, since, reason FROM outbox_target_states WHERE target = $1", target
        )
        return TargetState() if row is None else TargetState(row[0], row[1], row[2])

    async def requeue(self, target: str, *, transient_only: bool, limit: int | None = None) -> int:
        """See OutboxTransaction."""
        moved = await self.conn.fetchval(
            _REQUEUE,
            target,
            not transient_only,
            limit,
            self._counters_owner,
        )
        self._moved(target, int(moved))
        return int(moved)

    async def collect_garbage(self) -> int:
        """See OutboxTransaction: a sweep for what acks left (see `ack`), every `sweep_every`.

        One replica at a time (the others skip their turn); a chunk at most, so the group
        commit it rides in stays short.
        """
        if not self.sweep_due or not await self.conn.fetchval(
            "SELECT pg_try_advisory_xact_lock($1)", _GC_LOCK
        ):
            return 0
        self.swept = True
        deleted = await self.conn.execute(
            _DELETE_DONE + " LIMIT $2 FOR UPDATE OF s SKIP LOCKED)", _READY, _SWEEP_CHUNK
        )
        return int(deleted.rsplit(" ", 1)[-1])

    # -- backfills ----------------------------------------------------------------------

    async def backfill(self, target: str) -> BackfillState | None:
        """See OutboxTransaction."""
        row = await self.conn.fetchrow(_SELECT_BACKFILLS + " WHERE target = $1", target)
        return None if row is None else backfill_of(tuple(row))

    async def claim_backfill(
        self,
        target: str,
        holder: str,
        since: str | None,
        until: str,
        *,
        stale_after: float,
        restart: bool = False,
    ) -> BackfillState:
        """See OutboxTransaction (and OutboxStore.claim_backfill), in one statement."""
        row = await self.conn.fetchrow(
            _CLAIM_BACKFILL, target, holder, since, until, self._clock.now(), stale_after, restart
        )
        if row is None:
            raise BackfillBusy(target)
        return backfill_of(tuple(row))

    async def backfill_page(
        self,
        target: str,
        holder: str,
        items: Sequence[tuple[str, bytes, bytes | None, str | None]],
        progress: BackfillState,
    ) -> bool:
        """See OutboxTransaction (and OutboxStore.backfill_page), in one statement."""
        held = await self.conn.fetchval(
            _BACKFILL_PAGE,
            target,
            holder,
            progress.cursor,
            json.dumps(list(progress.tie_ids)),
            progress.first,
            progress.queued,
            progress.skipped,
            self._clock.now(),
            [item[0] for item in items],
            [item[1] for item in items],
            [item[2] for item in items],
            [item[3] for item in items],
            self._tenant,
            self._counters_owner,
        )
        if not held:
            return False
        self._moved(target, len(items))  # new statements: every delivery is a new row
        return True

    async def beat_backfill(self, target: str, holder: str) -> bool:
        """See OutboxTransaction."""
        done = await self.conn.execute(
            "UPDATE outbox_backfills SET updated_at = $3 "
            "WHERE target = $1 AND state = 'running' AND holder = $2",
            target,
            holder,
            self._clock.now(),
        )
        return done.endswith(" 1")

    async def finish_backfill(self, target: str, holder: str) -> bool:
        """See OutboxTransaction."""
        done = await self.conn.execute(
            "UPDATE outbox_backfills SET state = 'done', updated_at = $3, finished_at = $3, "
            "holder = NULL WHERE target = $1 AND state = 'running' AND holder = $2",
            target,
            holder,
            self._clock.now(),
        )
        return done.endswith(" 1")

    async def backlog_of(self, target: str) -> int:
        """See OutboxTransaction: from the counters, as `count_backlogs` (exact, cheap).

        A backfill asks this while it waits for room, perhaps behind a backlog of millions:
        counting the deliveries would read every one of them each time; the counters are
        a few rows per process run.
        """
        count = int(
            await self.conn.fetchval(
                "SELECT coalesce(sum(CASE name WHEN 'queued' THEN value ELSE -value END), 0) "
                "FROM outbox_counters WHERE target = $1 AND name IN ('queued', 'left')",
                target,
            )
        )
        self.queued.pop(target, None)  # counted: what came before is in the count
        self.recounted[target] = count
        return count

    # -- operating it -------------------------------------------------------------------

    async def targets(self) -> list[str]:
        """See OutboxTransaction."""
        rows = await self.conn.fetch(_ALL_TARGETS)
        return sorted(row[0] for row in rows)

    async def stats(self, targets: Iterable[str]) -> dict[str, TargetStats]:
        """See OutboxTransaction (backlogs counted, not estimated)."""
        names = list(targets)
        now = self._clock.now()
        backlogs = self.counted = await count_backlogs(self.conn)
        self.queued.clear()  # counted: what came before is in the count
        self.recounted.clear()
        counters: dict[tuple[str, str], int] = {
            (row[0], row[1]): int(row[2])
            for row in await self.conn.fetch(
                "SELECT target, name, sum(value) FROM outbox_counters "
                "WHERE target = ANY($1::text[]) GROUP BY target, name",
                names,
            )
        }
        dead = {
            row[0]: int(row[1])
            for row in await self.conn.fetch(
                "SELECT target, count(*) FROM outbox_dead_letters "
                "WHERE target = ANY($1::text[]) GROUP BY target",
                names,
            )
        }
        oldest = {
            row[0]: row[1]
            for row in await self.conn.fetch(
                "SELECT t, (SELECT s.created FROM outbox_deliveries d "
                "JOIN outbox_statements s ON s.seq = d.seq WHERE d.target = t "
                "ORDER BY d.seq LIMIT 1) FROM unnest($1::text[]) AS t",
                names,
            )
        }
        states = {
            row[0]: TargetState(row[1], row[2], row[3])
            for row in await self.conn.fetch(
                "SELECT target, up, since, reason FROM outbox_target_states "
                "WHERE target = ANY($1::text[])",
                names,
            )
        }
        backfills = {
            row[0]: backfill_of(tuple(row))
            for row in await self.conn.fetch(
                _SELECT_BACKFILLS + " WHERE target = ANY($1::text[])", names
            )
        }
        result = {}
        for target in names:
            state = states.get(target, TargetState())
            created = oldest.get(target)
            result[target] = TargetStats(
                state="up" if state.up else "down",
                up=state.up,
                backlog=backlogs.get(target, 0),
                oldest_age=None if created is None else max(0.0, now - created),
                delivered=counters.get((target, "delivered"), 0),
                retries=counters.get((target, "retries"), 0),
                dead_letters=dead.get(target, 0),
                dead_lettered_total=counters.get((target, "dead_letters"), 0),
                down_since=None if state.up else state.since,
                last_error=None if state.up else state.reason,
                filtered=counters.get((target, "filtered"), 0),
                skipped_signed=counters.get((target, "skipped_signed"), 0),
                signature_stripped=counters.get((target, "signature_stripped"), 0),
                backfilled=counters.get((target, "backfilled"), 0),
                backfill=None if target not in backfills else backfills[target].shown(),
            )
        return result


# Any 64-bit number the gateway alone uses: one replica collects garbage at a time.
_GC_LOCK = 0x6C72735F67770002
_SWEEP_CHUNK = 10_000
# Statements no delivery or dead letter needs; rows another transaction holds are skipped
# (never waited for: two replicas deleting the same rows must not deadlock).
_DELETE_DONE = """
    DELETE FROM outbox_statements WHERE seq IN (
        SELECT s.seq FROM outbox_statements s WHERE s.state = $1
        AND NOT EXISTS (SELECT 1 FROM outbox_deliveries d WHERE d.seq = s.seq)
        AND NOT EXISTS (SELECT 1 FROM outbox_dead_letters x WHERE x.seq = s.seq)
"""

_SELECT_BACKFILLS = f"SELECT {BACKFILL_COLUMNS} FROM outbox_backfills"  # noqa: S608
# Resumed: an interrupted (running) backfill keeps its range and progress, unless $7
# (restart); otherwise a fresh one. No row comes back while another holder's heartbeat
# ($5 - updated_at) is younger than $6: BackfillBusy. Two runs claiming at once take
# turns on the row (or on its key), the second seeing what the first wrote.
_RESUME = "(b.state = 'running' AND NOT $7::boolean)"
_CLAIM_BACKFILL = f"""
    INSERT INTO outbox_backfills AS b ({BACKFILL_COLUMNS})
    VALUES ($1, $3, $4, NULL, '[]', NULL, 0, 0, 'running', $5, $5, NULL, $2)
    ON CONFLICT (target) DO UPDATE SET
        since = CASE WHEN {_RESUME} THEN b.since ELSE excluded.since END,
        until = CASE WHEN {_RESUME} THEN b.until ELSE excluded.until END,
        cursor = CASE WHEN {_RESUME} THEN b.cursor END,
        tie_ids = CASE WHEN {_RESUME} THEN b.tie_ids ELSE '[]' END,
        first = CASE WHEN {_RESUME} THEN b.first END,
        queued = CASE WHEN {_RESUME} THEN b.queued ELSE 0 END,
        skipped = CASE WHEN {_RESUME} THEN b.skipped ELSE 0 END,
        started_at = CASE WHEN {_RESUME} THEN b.started_at ELSE excluded.started_at END,
        state = 'running',
        finished_at = NULL,
        updated_at = excluded.updated_at,
        holder = excluded.holder
    WHERE b.state <> 'running' OR b.holder IS NOT DISTINCT FROM $2 OR $5 - b.updated_at >= $6
    RETURNING {BACKFILL_COLUMNS}
"""  # noqa: S608  (constants only)
# The page and the cursor, or neither: nothing is queued unless $2 holds the running
# backfill (an UPDATE waits for a run taking it over, then sees the new holder).
_BACKFILL_PAGE = f"""
    WITH held AS (
        UPDATE outbox_backfills SET cursor = $3, tie_ids = $4, first = $5, queued = $6,
            skipped = $7, updated_at = $8
        WHERE target = $1 AND state = 'running' AND holder = $2
        RETURNING target
    ), stored AS (
        INSERT INTO outbox_statements
            (statement_id, body, attachments, version, state, created, tenant)
        SELECT i, b, a, v, {_READY}, $8, $13
        FROM held CROSS JOIN unnest($9::text[], $10::bytea[], $11::bytea[], $12::text[])
            WITH ORDINALITY AS u(i, b, a, v, n)
        ORDER BY n RETURNING seq
    ), queued AS (
        INSERT INTO outbox_deliveries (target, seq) SELECT $1, seq FROM stored
        RETURNING target
    ), counted_queued AS ({_bump("queued", "queued", "$14")}
    ), counted_backfilled AS ({_bump("backfilled", "queued", "$14")})
    SELECT count(*) FROM held
"""  # noqa: S608  (constants only)
