"""Outbox operations waiting for their group commit: how callers queue them, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.forwarding.transaction import OutboxTransaction

__all__ = [
    "MAX_GROUP",
    "Drop",
    "MarkReady",
    "Operation",
    "OperationQueue",
    "WritePending",
    "settle",
]

T = TypeVar("T")
Operation = Callable[[OutboxTransaction], Awaitable[T]]
MAX_GROUP = 512  # operations in one transaction at most
_MAX_WAITING = 10_000  # operations queued at most; callers wait beyond that


def settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Give an operation's caller its result (or error), unless it stopped waiting."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class OperationQueue:
    """`call` and `submit` for an outbox; the outbox says how a job reaches its committer."""

    def __init__(self) -> None:
        self._room = asyncio.Semaphore(_MAX_WAITING)

    def _queue(self, operation: Operation[Any], future: asyncio.Future[Any]) -> None:
        raise NotImplementedError

    async def call(self, operation: Operation[T]) -> T:
        """Run `operation(transaction)` in the next group commit; its result once committed."""
        async with self._room:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._queue(operation, future)
            return await future

    async def submit(
        self, operation: Operation[Any], then: Callable[[asyncio.Future[Any]], None]
    ) -> None:
        """Queue `operation` for the next group commit without waiting for the commit.

        `then(future)` runs on the loop once it is committed (or failed). Only the room in
        the queue is waited for.
        """
        await self._room.acquire()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(settled: asyncio.Future[Any]) -> None:
            self._room.release()
            then(settled)

        future.add_done_callback(done)
        self._queue(operation, future)


# The request path's operations, two a request: as values, so that an outbox whose every
# statement is a round trip (PostgreSQL) can merge those of a group into one statement
# each. Anywhere else they are operations like any other.


@dataclass(frozen=True, slots=True)
class WritePending:
    """Record statements before storage sees them: (id, bytes, packed attachment parts)."""

    items: Sequence[tuple[str, bytes, bytes | None]]
    version: str | None = None

    async def __call__(self, tx: OutboxTransaction) -> list[int]:
        """Run it alone."""
        return await tx.write_pending(self.items, self.version)


@dataclass(frozen=True, slots=True)
class MarkReady:
    """Storage accepted them: one delivery per (target, backlog_limit).

    `filtered`: how many of them each target's filter kept from it (counted alone).
    """

    seqs: Sequence[int]
    targets: Sequence[tuple[str, int]]
    filtered: Sequence[tuple[str, int]] = ()

    async def __call__(self, tx: OutboxTransaction) -> None:
        """Run it alone."""
        await tx.mark_ready(self.seqs, self.targets)
        if self.filtered:
            await tx.count("filtered", self.filtered)


@dataclass(frozen=True, slots=True)
class Drop:
    """Storage refused them: forget them (only while still pending)."""

    seqs: Sequence[int]

    async def __call__(self, tx: OutboxTransaction) -> None:
        """Run it alone."""
        await tx.drop(self.seqs)
