"""The outbox in PostgreSQL, shared by every replica, with group commits on the event loop.

The operations of a few milliseconds share one transaction (one round trip to commit),
as with SQLite; asyncpg never blocks the loop, so no thread is needed. One operation that
fails sends the others to a transaction each, so it alone fails. A database that cannot be
reached fails its callers with StoreUnavailable (a 503 to a client: nothing is accepted
that is not recorded), logged once when it goes and once when it is back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import StoreUnavailable
from gateway.forwarding.operations import MAX_GROUP, Operation, OperationQueue
from gateway.forwarding.postgres_store import (
    PostgresTransaction,
    count_backlogs,
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
_Job = tuple[Operation[Any], asyncio.Future[Any]]
_POOL_SIZE = 2  # the group commits, and a CLI-style read beside them
_SWEEP_EVERY = 600.0  # seconds between sweeps for garbage the acks left (rare: see ack)


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
    ) -> None:
        super().__init__()
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
        self._task: asyncio.Task[None] | None = None
        self._backlog: dict[str, int] = {}
        self._reachable = True
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
        )
        async with self._pool.acquire() as conn:
            self.ident = await outbox_id(conn)
            self._backlog = await count_backlogs(conn)
        self._task = asyncio.create_task(self._run(), name="outbox-postgres")

    async def close(self) -> None:
        """Finish queued operations, stop, close the pool."""
        if self._task is not None:
            self._closing = True
            self._ready.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def backlog(self) -> dict[str, int]:
        """Deliveries queued per target: counted every status read, moved by this process."""
        return dict(self._backlog)

    async def restore(self, rows: OutboxRows, *, owner: str) -> int:
        """Take in what another outbox owes (`store copy`), in one transaction; how many.

        Statements get new sequence numbers (after every one here), in their order; the
        counters are kept under `owner`, so the totals go on where they were.
        """
        assert self._pool is not None
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            return await restore_rows(conn, rows, owner=owner)

    def _queue(self, operation: Operation[Any], future: asyncio.Future[Any]) -> None:
        if self._task is None or self._closing:
            raise RuntimeError("the outbox is not open")
        self._jobs.append((operation, future))
        self._ready.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._ready.wait()
                if self._closing and not self._jobs:
                    return
                group = [self._jobs.popleft() for _ in range(min(len(self._jobs), MAX_GROUP))]
                if not self._jobs and not self._closing:
                    self._ready.clear()
                if group:
                    await self._commit(group)
        finally:
            stopped = RuntimeError("the outbox was closed")
            while self._jobs:
                _settle(self._jobs.popleft()[1], False, stopped)

    def _transaction(self, conn: Any) -> PostgresTransaction:
        return PostgresTransaction(
            conn,
            owner=self.owner,
            lease=self.lease,
            clock=self._clock,
            backlog=self._backlog,
            sweep_due=self._clock.monotonic() - self._last_sweep >= _SWEEP_EVERY,
        )

    def _committed(self, tx: PostgresTransaction) -> None:
        if tx.swept:
            self._last_sweep = self._clock.monotonic()
        if tx.counted is not None:
            self._backlog = dict(tx.counted)
        for target, moved in tx.queued.items():
            self._backlog[target] = max(0, self._backlog.get(target, 0) + moved)

    async def _commit(self, group: list[_Job]) -> None:
        assert self._pool is not None
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                tx = self._transaction(conn)
                try:
                    async with conn.transaction():
                        values = [await operation(tx) for operation, _ in group]
                except Exception as exc:
                    if unreachable(exc) or len(group) == 1:
                        raise
                    # One operation failed (or two replicas' commits crossed): each on its
                    # own, so only what fails fails.
                    await self._one_by_one(conn, group)
                    return
                self.commits += 1
                self._committed(tx)
        except Exception as exc:
            failure = self._failure(exc)
            for _, future in group:
                _settle(future, False, failure)
            return
        self._back()
        for (_, future), value in zip(group, values, strict=True):
            _settle(future, True, value)

    async def _one_by_one(self, conn: Any, group: list[_Job]) -> None:
        for operation, future in group:
            tx = self._transaction(conn)
            try:
                async with conn.transaction():
                    value = await operation(tx)
            except Exception as exc:
                _settle(future, False, self._failure(exc))
            else:
                self.commits += 1
                self._committed(tx)
                _settle(future, True, value)

    def _failure(self, exc: Exception) -> Exception:
        """What a caller gets for `exc`: StoreUnavailable when the database is out of reach."""
        if not unreachable(exc):
            return exc
        if self._reachable:
            self._reachable = False
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

    def _back(self) -> None:
        if not self._reachable:
            self._reachable = True
            log.info("outbox: PostgreSQL at %s is back", where(self._dsn))


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
