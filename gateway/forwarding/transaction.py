"""What one outbox transaction can do, whatever the database behind it.

The forwarder and the target workers write their operations as async functions of an
`OutboxTransaction`; the outbox runs several of them in one group commit. The SQLite
outbox runs them on its own thread (`SqliteTransaction` below, whose methods never wait);
a database with an async driver can run them on the event loop. Every method is one step
of the same transaction: a caller that needs two (ack, then claim the next batch) gets
both or neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from gateway.forwarding.store import (
    BackfillState,
    Claimed,
    LiveStart,
    OutboxStore,
    TargetState,
    TargetStats,
)

__all__ = ["Outbox", "OutboxTransaction", "SqliteTransaction"]


class OutboxTransaction(Protocol):
    """The outbox's operations inside one transaction."""

    async def write_pending(
        self, items: Sequence[tuple[str, bytes, bytes | None]], version: str | None = None
    ) -> list[int]:
        """Record (id, bytes, packed attachment parts) before storage sees them."""
        ...

    async def mark_ready(self, seqs: Sequence[int], targets: Sequence[tuple[str, int]]) -> None:
        """Storage accepted them: one delivery per (target, backlog_limit)."""
        ...

    async def drop(self, seqs: Sequence[int]) -> None:
        """Storage refused them: forget them (only while still pending)."""
        ...

    async def pending(self, created_before: float, limit: int = 500) -> list[tuple[int, str]]:
        """Pending statements older than a moment: (seq, statement id)."""
        ...

    async def claim(self, target: str, limit: int) -> list[Claimed]:
        """The oldest deliveries for `target`."""
        ...

    async def renew(self, target: str, seqs: Sequence[int]) -> int:
        """Still working on these claimed deliveries: extend the claim; how many are held."""
        ...

    async def ack(self, target: str, seqs: Sequence[int], *, counter: str = "delivered") -> None:
        """Done with them: `delivered`, or not sent (`filtered`, `skipped_signed`)."""
        ...

    async def count(self, counter: str, counts: Sequence[tuple[str, int]]) -> None:
        """Add to each target's `counter` (e.g. `filtered` as statements are queued)."""
        ...

    async def retry(
        self, target: str, seqs: Sequence[int], next_attempt: float, error: str
    ) -> None:
        """A transient failure: try again at `next_attempt`."""
        ...

    async def dead_letter(self, target: str, seqs: Sequence[int], reason: str) -> None:
        """Give up on these deliveries for a permanent reason (they stay replayable)."""
        ...

    async def set_state(self, target: str, state: TargetState) -> None:
        """Record that `target` went down or came back."""
        ...

    async def target_state(self, target: str) -> TargetState:
        """Whether `target` was last seen up."""
        ...

    async def requeue(self, target: str, *, transient_only: bool, limit: int | None = None) -> int:
        """Move dead letters of `target` back into its queue; how many moved."""
        ...

    async def collect_garbage(self) -> int:
        """Delete statements no delivery or dead letter needs any more."""
        ...

    async def targets(self) -> list[str]:
        """Every target the outbox knows of."""
        ...

    async def stats(self, targets: Iterable[str]) -> dict[str, TargetStats]:
        """Per target: backlog, lag, totals."""
        ...

    # -- backfills (gateway.forwarding.backfill) ----------------------------------------

    async def went_live(self, targets: Sequence[str]) -> None:
        """These targets are forwarded to from now on (the first time is kept)."""
        ...

    async def live_start(self, target: str) -> LiveStart:
        """When live forwarding to `target` began, and the ids queued in its first moments."""
        ...

    async def backfill(self, target: str) -> BackfillState | None:
        """`target`'s backfill, running or done."""
        ...

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
        """Hold `target`'s backfill (resume an interrupted one); BackfillBusy if held."""
        ...

    async def backfill_page(
        self,
        target: str,
        holder: str,
        items: Sequence[tuple[str, bytes, bytes | None, str | None]],
        progress: BackfillState,
    ) -> bool:
        """Queue (id, bytes, parts, version) for `target` and record `progress`, atomically."""
        ...

    async def beat_backfill(self, target: str, holder: str) -> bool:
        """The holder is still at it; False once it no longer holds the backfill."""
        ...

    async def finish_backfill(self, target: str, holder: str) -> bool:
        """The backfill is done; False once `holder` no longer holds it."""
        ...

    async def backlog_of(self, target: str) -> int:
        """Deliveries queued for `target` now, whoever queued them."""
        ...


T = TypeVar("T")


class Outbox(Protocol):
    """Where operations run, a few to a transaction: SQLite's thread or PostgreSQL's pool."""

    commits: int

    @property
    def shared(self) -> bool:
        """Whether other processes write and deliver from it too."""
        ...

    @property
    def lease(self) -> float | None:
        """Seconds a claim lasts unless renewed (None: claims never end)."""
        ...

    @property
    def ident(self) -> str:
        """The outbox's stable id (the `outbox` label of its metrics)."""
        ...

    @property
    def backlog(self) -> dict[str, int]:
        """Deliveries queued per target, read without a round trip."""
        ...

    async def open(self) -> None:
        """Open (or create) it and start committing."""
        ...

    async def close(self) -> None:
        """Finish queued operations and stop."""
        ...

    async def call(self, operation: Callable[[OutboxTransaction], Awaitable[T]]) -> T:
        """Run `operation(transaction)` in the next group commit; its result once committed."""
        ...

    async def read(self, operation: Callable[[OutboxTransaction], Awaitable[T]]) -> T:
        """Run an operation that only reads, beside the group commits where it can."""
        ...

    async def submit(
        self,
        operation: Callable[[OutboxTransaction], Awaitable[Any]],
        then: Callable[[asyncio.Future[Any]], None],
    ) -> None:
        """Queue `operation` without waiting for its commit; `then(future)` once settled."""
        ...


class SqliteTransaction:
    """`OutboxTransaction` over the SQLite `OutboxStore`, on the outbox's own thread."""

    def __init__(self, store: OutboxStore) -> None:
        self.store = store  # SQLite's own, for what only SQLite has (tests, the CLI)

    async def write_pending(
        self, items: Sequence[tuple[str, bytes, bytes | None]], version: str | None = None
    ) -> list[int]:
        """See OutboxTransaction."""
        return self.store.write_pending(items, version)

    async def mark_ready(self, seqs: Sequence[int], targets: Sequence[tuple[str, int]]) -> None:
        """See OutboxTransaction."""
        self.store.mark_ready(seqs, targets)

    async def drop(self, seqs: Sequence[int]) -> None:
        """See OutboxTransaction."""
        self.store.drop(seqs)

    async def pending(self, created_before: float, limit: int = 500) -> list[tuple[int, str]]:
        """See OutboxTransaction."""
        return self.store.pending(created_before, limit)

    async def claim(self, target: str, limit: int) -> list[Claimed]:
        """See OutboxTransaction."""
        return self.store.claim(target, limit)

    async def renew(self, target: str, seqs: Sequence[int]) -> int:
        """See OutboxTransaction: one process owns the file, its claims never end."""
        return len(seqs)

    async def ack(self, target: str, seqs: Sequence[int], *, counter: str = "delivered") -> None:
        """See OutboxTransaction."""
        self.store.ack(target, seqs, counter=counter)

    async def count(self, counter: str, counts: Sequence[tuple[str, int]]) -> None:
        """See OutboxTransaction."""
        self.store.count(counter, counts)

    async def retry(
        self, target: str, seqs: Sequence[int], next_attempt: float, error: str
    ) -> None:
        """See OutboxTransaction."""
        self.store.retry(target, seqs, next_attempt, error)

    async def dead_letter(self, target: str, seqs: Sequence[int], reason: str) -> None:
        """See OutboxTransaction."""
        self.store.dead_letter(target, seqs, reason)

    async def set_state(self, target: str, state: TargetState) -> None:
        """See OutboxTransaction."""
        self.store.set_state(target, state)

    async def target_state(self, target: str) -> TargetState:
        """See OutboxTransaction."""
        return self.store.target_state(target)

    async def requeue(self, target: str, *, transient_only: bool, limit: int | None = None) -> int:
        """See OutboxTransaction."""
        return self.store.requeue(target, transient_only=transient_only, limit=limit)

    async def collect_garbage(self) -> int:
        """See OutboxTransaction."""
        return self.store.collect_garbage()

    async def targets(self) -> list[str]:
        """See OutboxTransaction."""
        return self.store.targets()

    async def stats(self, targets: Iterable[str]) -> dict[str, TargetStats]:
        """See OutboxTransaction."""
        return self.store.stats(targets)

    async def went_live(self, targets: Sequence[str]) -> None:
        """See OutboxTransaction."""
        self.store.went_live(targets)

    async def live_start(self, target: str) -> LiveStart:
        """See OutboxTransaction."""
        return self.store.live_start(target)

    async def backfill(self, target: str) -> BackfillState | None:
        """See OutboxTransaction."""
        return self.store.backfill(target)

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
        """See OutboxTransaction."""
        return self.store.claim_backfill(
            target, holder, since, until, stale_after=stale_after, restart=restart
        )

    async def backfill_page(
        self,
        target: str,
        holder: str,
        items: Sequence[tuple[str, bytes, bytes | None, str | None]],
        progress: BackfillState,
    ) -> bool:
        """See OutboxTransaction."""
        return self.store.backfill_page(target, holder, items, progress)

    async def beat_backfill(self, target: str, holder: str) -> bool:
        """See OutboxTransaction."""
        return self.store.beat_backfill(target, holder)

    async def finish_backfill(self, target: str, holder: str) -> bool:
        """See OutboxTransaction."""
        return self.store.finish_backfill(target, holder)

    async def backlog_of(self, target: str) -> int:
        """See OutboxTransaction."""
        return self.store.backlog_of(target)
