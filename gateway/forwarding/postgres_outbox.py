"""The outbox in PostgreSQL, shared by every replica, with group commits on the event loop.

The operations of a few milliseconds share one transaction, as with SQLite; asyncpg never
blocks the loop, so no thread is needed. A commit is mostly round trips, so the request
path's operations of a group become one statement per kind, and three commits are in
flight at once; reads run beside them. One operation that fails sends the others to a
transaction each, so it alone fails. A database that cannot be reached fails its callers
with StoreUnavailable (a 503 to a client: nothing is accepted that is not recorded),
logged once when it goes and once when it is back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import StoreUnavailable
from gateway.forwarding.operations import (
    MAX_GROUP,
    Drop,
    MarkReady,
    Operation,
    OperationQueue,
    WritePending,
    settle,
)
from gateway.forwarding.postgres_store import (
    PostgresTransaction,
    count_backlogs,
    live_origins,
    outbox_id,
    restore_rows,
)
from gateway.forwarding.store import OutboxRows
from gateway.secret import Secret
from gateway.store.postgres import open_pool, unreachable, where

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresOutbox"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_Job = tuple[Operation[Any], asyncio.Future[Any]]
# Group commits in flight at once: a commit is mostly waiting for round trips, so a few
# side by side (each its own connection) multiply what one connection can do.
_COMMITTERS = 3
_POOL_SIZE = _COMMITTERS + 2  # and reads (status, the resolver) beside them
_SWEEP_EVERY = 600.0  # seconds between sweeps for garbage the acks left (rare: see ack)


async def _keep_as_is(conn: Any) -> None:
    """What a connection goes through when given back: nothing (no session state is set)."""


class PostgresOutbox(OperationQueue):
    """Runs outbox operations in group-committed PostgreSQL transactions."""

    shared = True  # other replicas write and deliver from the same outbox

    def __init__(
        self,
        dsn: str,
        *,
        password: Secret | None = None,
        timeout: float = 5.0,
        lease: float = 30.0,
        auto_migrate: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        tenant: str | None = None,
    ) -> None:
        super().__init__()
        self._tenant = tenant
        self._dsn = dsn
        self._password = password
        self._timeout = timeout
        self.lease = lease
        self._auto_migrate = auto_migrate
        self._clock = clock
        # This process's run: its claims and counters (a restart is a new owner).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._jobs: collections.deque[_Job] = collections.deque()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._backlog: dict[str, int] = {}
        # When live forwarding to each target began (see went_live): mark_ready keeps the
        # ids of a target's first moments. Read at open, refreshed by went_live.
        self._origins: dict[str, float | None] = {}
        self._full: set[str] = set()  # targets past backlog_limit (logged once an episode)
        self._reachable = True
        self._outages = 0  # times it was found out of reach (commits note it as they begin)
        self._closing = False
        self._last_sweep = -_SWEEP_EVERY  # the first comes at the first chance
        self.ident = ""  # the outbox's stable id (the `outbox` label of its metrics)
        self.commits = 0  # transactions so far (bench and tests read it)

    def __repr__(self) -> str:
        return f"PostgresOutbox({where(self._dsn)})"  # never the DSN: it may hold a password

    async def open(self) -> None:
        """Connect (migrating as `store.migrate` says) and start committing."""
        self._pool, _ = await open_pool(
            self._dsn,
            password=self._password,
            query_timeout=self._timeout,
            size=_POOL_SIZE,
            auto_migrate=self._auto_migrate,
            reset=_keep_as_is,
        )
        async with self._pool.acquire() as conn:
            self.ident = await outbox_id(conn)
            self._backlog = await count_backlogs(conn)
            self._origins = await live_origins(conn)
        self._tasks = [
            asyncio.create_task(self._run(index), name=f"outbox-postgres-{index}")
            for index in range(_COMMITTERS)
        ]

    async def close(self) -> None:
        """Finish queued operations, stop, close the pool."""
        if self._tasks:
            self._closing = True
            self._ready.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def backlog(self) -> dict[str, int]:
        """Deliveries queued per target: counted every status read, moved by this process."""
        return dict(self._backlog)

    async def restore(self, rows: OutboxRows, *, owner: str, tenant: str | None = None) -> int:
        """Take in what another outbox owes (`store copy`), in one transaction; how many.

        Statements get new sequence numbers (after every one here), in their order; the
        counters are kept under `owner`, so the totals go on where they were.
        """
        assert self._pool is not None
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                return await restore_rows(conn, rows, owner=owner, tenant=tenant)
        except Exception as exc:
            raise self._failure(exc) from None

    async def read(self, operation: Operation[T]) -> T:
        """Run a reading `operation` beside the group commits (status, pending rows).

        On a connection of its own, in one snapshot: a slow read (the counts of a long
        backlog) never holds up a commit.
        """
        assert self._pool is not None
        started = self._outages
        try:
            async with (
                self._pool.acquire(timeout=self._timeout) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                tx = self._transaction(conn, 0)
                value = await operation(tx)
        except Exception as exc:
            raise self._failure(exc) from None
        self._back(started)
        self._counted(tx)
        return value

    def _queue(self, operation: Operation[Any], future: asyncio.Future[Any]) -> None:
        if not self._tasks or self._closing:
            raise RuntimeError("the outbox is not open")
        self._jobs.append((operation, future))
        self._ready.set()

    async def _run(self, index: int) -> None:
        try:
            while True:
                await self._ready.wait()
                if self._closing and not self._jobs:
                    return
                group = [self._jobs.popleft() for _ in range(min(len(self._jobs), MAX_GROUP))]
                if not self._jobs and not self._closing:
                    self._ready.clear()
                if group:
                    await self._commit(group, index)
        finally:
            stopped = RuntimeError("the outbox was closed")
            while self._jobs:
                settle(self._jobs.popleft()[1], False, stopped)

    def _transaction(self, conn: Any, committer: int) -> PostgresTransaction:
        return PostgresTransaction(
            conn,
            owner=self.owner,
            # Each committer counts under its own rows: they never wait on each other.
            counters_owner=f"{self.owner}/{committer}",
            lease=self.lease,
            clock=self._clock,
            backlog=self._backlog,
            origins=self._origins,
            tenant=self._tenant,
            sweep_due=self._clock.monotonic() - self._last_sweep >= _SWEEP_EVERY,
        )

    def _committed(self, tx: PostgresTransaction) -> None:
        for target in tx.overflowed - self._full:
            log.warning(
                "forwarding to %s: backlog full (its backlog_limit): new statements go to "
                "its dead letters (`lrs-gateway forwarding replay` once it has caught up)",
                target,
            )
        self._full |= tx.overflowed
        if tx.swept:
            self._last_sweep = self._clock.monotonic()
        self._origins.update(tx.went)
        self._counted(tx)
        for target, moved in tx.queued.items():
            self._backlog[target] = max(0, self._backlog.get(target, 0) + moved)

    def _counted(self, tx: PostgresTransaction) -> None:
        """Backlogs `tx` counted (stats, backlog_of) replace the estimate."""
        if tx.counted is not None:
            self._backlog = dict(tx.counted)
        self._backlog.update(tx.recounted)
        if tx.counted is not None or tx.recounted:
            self._full = {t for t in self._full if self._backlog.get(t, 0) > 0}

    async def _commit(self, group: list[_Job], committer: int) -> None:
        assert self._pool is not None
        started = self._outages
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                tx = self._transaction(conn, committer)
                try:
                    async with conn.transaction():
                        values = await _run_group(tx, [operation for operation, _ in group])
                except Exception as exc:
                    if unreachable(exc) or len(group) == 1:
                        raise
                    # One operation failed (or two replicas' commits crossed): each on its
                    # own, so only what fails fails.
                    await self._one_by_one(conn, group, committer)
                    return
                self.commits += 1
                self._committed(tx)
        except Exception as exc:
            failure = self._failure(exc)
            for _, future in group:
                settle(future, False, failure)
            return
        self._back(started)
        for (_, future), value in zip(group, values, strict=True):
            settle(future, True, value)

    async def _one_by_one(self, conn: Any, group: list[_Job], committer: int) -> None:
        for operation, future in group:
            tx = self._transaction(conn, committer)
            try:
                async with conn.transaction():
                    value = await operation(tx)
            except Exception as exc:
                settle(future, False, self._failure(exc))
            else:
                self.commits += 1
                self._committed(tx)
                settle(future, True, value)

    def _failure(self, exc: Exception) -> Exception:
        """What a caller gets for `exc`: StoreUnavailable when the database is out of reach."""
        if not unreachable(exc):
            return exc
        if self._reachable:
            self._reachable = False
            self._outages += 1
            log.warning(
                "outbox: PostgreSQL at %s cannot be reached (%s: %s); writes get 503 and "
                "forwarding waits until it is back",
                where(self._dsn),
                type(exc).__name__,
                exc,
            )
        failure = StoreUnavailable(
            f"the outbox database cannot be reached ({type(exc).__name__}); try again"
        )
        failure.__cause__ = exc
        return failure

    def _back(self, started: int) -> None:
        """A commit or read begun in outage number `started` succeeded.

        Only one begun after the database was found out of reach says it is back: another
        committer's, in flight before, may still finish.
        """
        if not self._reachable and started == self._outages:
            self._reachable = True
            log.info("outbox: PostgreSQL at %s is back", where(self._dsn))


async def _run_group(tx: PostgresTransaction, operations: list[Operation[Any]]) -> list[Any]:
    """Every operation's result; the request path's merged into a statement per kind.

    A group holds up to two operations per request in flight; as statements of their own
    they would be as many round trips.
    """
    values: list[Any] = [None] * len(operations)
    writes = [(i, op) for i, op in enumerate(operations) if isinstance(op, WritePending)]
    if writes:
        written = await tx.write_pending_batches([(op.items, op.version) for _, op in writes])
        for (index, _), found in zip(writes, written, strict=True):
            values[index] = found
    ready: dict[tuple[tuple[str, int], ...], list[int]] = {}
    for op in operations:
        if isinstance(op, MarkReady):
            ready.setdefault(tuple(op.targets), []).extend(op.seqs)
    filtered: dict[str, int] = {}
    for targets, seqs in ready.items():
        await tx.mark_ready(seqs, targets)
    for op in operations:
        if isinstance(op, MarkReady):
            for target, count in op.filtered:
                filtered[target] = filtered.get(target, 0) + count
    if filtered:
        await tx.count("filtered", list(filtered.items()))
    dropped = [seq for op in operations if isinstance(op, Drop) for seq in op.seqs]
    if dropped:
        await tx.drop(dropped)
    for index, op in enumerate(operations):
        if not isinstance(op, WritePending | MarkReady | Drop):
            values[index] = await op(tx)
    return values
