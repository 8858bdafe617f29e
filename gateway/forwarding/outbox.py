"""The outbox store behind one thread, with group commits.

The event loop never waits on SQLite, and the requests of a few milliseconds share one
transaction (one fsync). Operations are async functions of an `OutboxTransaction` (the
same for any database); here the SQLite transaction's methods never wait, so the thread
runs each operation to its end in one step, without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.forwarding.operations import MAX_GROUP, Operation, OperationQueue, settle
from gateway.forwarding.store import OutboxStore
from gateway.forwarding.transaction import SqliteTransaction

__all__ = ["SqliteOutbox"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_Job = tuple[Operation[Any], asyncio.Future[Any]]


class SqliteOutbox(OperationQueue):
    """Runs outbox operations on its own thread, in group-committed transactions."""

    shared = False  # this process alone writes and delivers from it
    lease = None  # nothing to claim from another process

    def __init__(self, path: Path, *, synchronous: str, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__()
        self._path = path
        self._clock = clock
        self._synchronous = synchronous
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._store: OutboxStore | None = None
        self.commits = 0  # transactions so far (bench and tests read it)

    async def open(self) -> None:
        """Open (or create) the database and start the thread."""
        self._store = await asyncio.to_thread(
            OutboxStore, self._path, synchronous=self._synchronous, clock=self._clock
        )
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Finish queued operations, stop the thread, close the database."""
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._store is not None:
            self._store.close()

    @property
    def ident(self) -> str:
        """The outbox's stable id (the `outbox` label of its metrics)."""
        return self._store.ident if self._store is not None else ""

    @property
    def backlog(self) -> dict[str, int]:
        """Deliveries queued per target (read without a round trip to the thread)."""
        return dict(self._store.backlog) if self._store is not None else {}

    async def read(self, operation: Operation[T]) -> T:
        """A read: on the outbox's thread too (one connection), in the next group."""
        return await self.call(operation)

    def _queue(self, operation: Operation[Any], future: asyncio.Future[Any]) -> None:
        self._jobs.put((operation, future))

    def _run(self) -> None:
        assert self._store is not None
        store = self._store
        while True:
            first = self._jobs.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                group.append(job)
            self._commit(store, group)
            if stop:
                return

    def _commit(self, store: OutboxStore, group: list[_Job]) -> None:
        transaction = SqliteTransaction(store)
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            store.conn.execute("BEGIN IMMEDIATE")
            for index, (operation, future) in enumerate(group):
                store.conn.execute(f"SAVEPOINT op{index}")
                try:
                    value = _finish(operation(transaction))
                except Exception as exc:  # one bad operation must not sink the group
                    store.conn.execute(f"ROLLBACK TO op{index}")
                    store.recount()  # the in-memory backlog may have moved with it
                    results.append((future, False, exc))
                else:
                    results.append((future, True, value))
                store.conn.execute(f"RELEASE op{index}")
            store.conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            log.error("outbox: a group commit failed: %s", exc)
            with contextlib.suppress(sqlite3.Error):
                store.conn.execute("ROLLBACK")
            store.recount()
            results = [(future, False, exc) for _, future in group]
        for future, ok, value in results:
            future.get_loop().call_soon_threadsafe(settle, future, ok, value)


def _finish(operation: Awaitable[T]) -> T:
    """Run an operation whose awaits never wait (SQLite's) to its end, in one step."""
    steps = operation.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    close = getattr(steps, "close", None)
    if close is not None:
        close()
    raise RuntimeError("an outbox operation waited on something; SQLite's never do")
