"""The outbox's operations on PostgreSQL, shared by every replica (asyncpg).

The same rows and meanings as the SQLite outbox (gateway.forwarding.store), plus a lease
on each delivery: a replica claims a batch for `lease` seconds (renewed while it still
works on it) with `FOR UPDATE SKIP LOCKED`, so two replicas never send the same statement
at the same time, and the claims of a replica that died end with their lease. Leases are
timed by the database's clock, which every replica shares (their own clocks may differ).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from gateway.clock import Clock
from gateway.forwarding.store import BACKLOG_FULL, Claimed, OutboxRows, TargetState, TargetStats

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

__all__ = ["PostgresTransaction", "count_backlogs", "outbox_id", "restore_rows"]

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
"""  # noqa: S608  (constants only)


async def outbox_id(conn: Connection) -> str:
    """The outbox's stable id (the `outbox` label of its metrics)."""
    value = await conn.fetchval("SELECT value FROM shared_keys WHERE name = 'outbox-id'")
    return bytes(value).decode("ascii")


async def count_backlogs(conn: Connection) -> dict[str, int]:
    """Deliveries queued per target."""
    rows = await conn.fetch("SELECT target, count(*) FROM outbox_deliveries GROUP BY target")
    return {target: int(count) for target, count in rows}


async def restore_rows(conn: Connection, rows: OutboxRows, *, owner: str) -> int:
    """Insert another outbox's rows (new sequence numbers, same order); how many statements."""
    statements = rows.statements
    new = await conn.fetch(
        "INSERT INTO outbox_statements "
        "(statement_id, body, attachments, version, state, created) "
        "SELECT i, b, a, v, st, c FROM unnest($1::text[], $2::bytea[], $3::bytea[], "
        "$4::text[], $5::smallint[], $6::float8[]) WITH ORDINALITY AS u(i, b, a, v, st, c, n) "
        "ORDER BY n RETURNING seq",
        [row[1] for row in statements],
        [row[2] for row in statements],
        [row[3] for row in statements],
        [row[4] for row in statements],
        [row[5] for row in statements],
        [row[6] for row in statements],
    )
    seq_of = dict(zip((row[0] for row in statements), sorted(r[0] for r in new), strict=True))
    await conn.executemany(
        "INSERT INTO outbox_deliveries (target, seq, attempts, next_attempt, last_error) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(t, seq_of[seq], attempts, at, error) for t, seq, attempts, at, error in rows.deliveries],
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
        lease: float,
        clock: Clock,
        backlog: dict[str, int],
        sweep_due: bool = True,
    ) -> None:
        self.conn = conn
        self._owner = owner
        self._lease = lease
        self._clock = clock
        self._backlog = backlog
        self.queued: dict[str, int] = {}  # deliveries this transaction added (or removed)
        self.counted: dict[str, int] | None = None  # backlogs counted in this transaction
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
                self._owner,
                by,
            )

    # -- the write path -----------------------------------------------------------------

    async def write_pending(
        self, items: Sequence[tuple[str, bytes, bytes | None]], version: str | None = None
    ) -> list[int]:
        """See OutboxTransaction."""
        rows = await self.conn.fetch(
            "INSERT INTO outbox_statements "
            "(statement_id, body, attachments, version, state, created) "
            "SELECT i, b, a, $4, $5, $6 FROM unnest($1::text[], $2::bytea[], $3::bytea[]) "
            "WITH ORDINALITY AS u(i, b, a, n) ORDER BY n RETURNING seq",
            [item[0] for item in items],
            [item[1] for item in items],
            [item[2] for item in items],
            version,
            _PENDING,
            self._clock.now(),
        )
        return sorted(row[0] for row in rows)

    async def mark_ready(self, seqs: Sequence[int], targets: Sequence[tuple[str, int]]) -> None:
        """See OutboxTransaction (past `backlog_limit`, as the estimate tells it)."""
        if not seqs:
            return
        ready = sorted(
            row[0]
            for row in await self.conn.fetch(
                "UPDATE outbox_statements SET state = $1 "
                "WHERE state = $2 AND seq = ANY($3::bigint[]) RETURNING seq",
                _READY,
                _PENDING,
                list(seqs),
            )
        )
        if not ready:
            return
        queued_targets: list[str] = []
        queued_seqs: list[int] = []
        for target, limit in targets:
            room = max(0, limit - self._backlog.get(target, 0) - self.queued.get(target, 0))
            queued, overflow = ready[:room], ready[room:]
            queued_targets.extend([target] * len(queued))
            queued_seqs.extend(queued)
            self._moved(target, len(queued))
            if overflow:
                await self._dead(target, overflow, BACKLOG_FULL)
        if queued_seqs:
            await self.conn.execute(
                "INSERT INTO outbox_deliveries (target, seq) "
                "SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
                queued_targets,
                queued_seqs,
            )

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
            "ORDER BY created LIMIT $3",
            _PENDING,
            created_before,
            limit,
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

    async def ack(self, target: str, seqs: Sequence[int]) -> None:
        """See OutboxTransaction."""
        deleted = await self.conn.execute(
            "DELETE FROM outbox_deliveries WHERE target = $1 AND seq = ANY($2::bigint[])",
            target,
            list(seqs),
        )
        count = int(deleted.rsplit(" ", 1)[-1])
        self._moved(target, -count)
        await self._bump(target, "delivered", count)
        # The last target to get a statement deletes it: the sweep is left only what two
        # replicas acked side by side (neither saw the other's ack).
        await self.conn.execute(
            _DELETE_DONE + " AND s.seq = ANY($2::bigint[]) FOR UPDATE OF s SKIP LOCKED)",
            _READY,
            list(seqs),
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
        deleted = await self.conn.execute(
            "DELETE FROM outbox_deliveries WHERE target = $1 AND seq = ANY($2::bigint[])",
            target,
            list(seqs),
        )
        self._moved(target, -int(deleted.rsplit(" ", 1)[-1]))
        await self._dead(target, seqs, reason)

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
        moved = await self.conn.fetch(
            "WITH picked AS ("
            "  DELETE FROM outbox_dead_letters WHERE (target, seq) IN ("
            "    SELECT target, seq FROM outbox_dead_letters WHERE target = $1"
            "    AND ($2 OR transient) ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED)"
            "  RETURNING seq"
            ") INSERT INTO outbox_deliveries (target, seq) SELECT $1, seq FROM picked "
            "ON CONFLICT DO NOTHING RETURNING seq",
            target,
            not transient_only,
            limit,
        )
        self._moved(target, len(moved))
        return len(moved)

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
