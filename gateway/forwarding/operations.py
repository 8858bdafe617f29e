"""Outbox operations waiting for their group commit: how callers queue them, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.forwarding.transaction import OutboxTransaction

__all__ = ["MAX_GROUP", "Operation", "OperationQueue"]

T = TypeVar("T")
Operation = Callable[[OutboxTransaction], Awaitable[T]]
MAX_GROUP = 512  # operations in one transaction at most
_MAX_WAITING = 10_000  # operations queued at most; callers wait beyond that


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
