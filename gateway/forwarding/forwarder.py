"""Ties the outbox to the request path, the target workers and the pending resolver."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.settings import Config
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.failurelog import FailureLog
from gateway.forwarding.operations import Drop, MarkReady, WritePending
from gateway.forwarding.outboxes import OUTBOX_FILE, outbox_for
from gateway.forwarding.store import REPLAY_CHUNK, TargetStats
from gateway.forwarding.target_worker import TargetWorker
from gateway.forwarding.transaction import Outbox, OutboxTransaction
from gateway.upstream.storage import StorageClient
from gateway.upstream.target import Observe
from gateway.xapi.filters import StatementFilter, voided_id

__all__ = ["OUTBOX_FILE", "Forwarder"]

log = logging.getLogger(__name__)
_GC_INTERVAL = 30.0
_SNAPSHOT_INTERVAL = 2.0


class Forwarder:
    """Durable fan-out: write-ahead on the request path, delivery in the background."""

    def __init__(
        self,
        config: Config,
        storage: StorageClient,
        *,
        observe: Observe | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        storage_version: Callable[[], str] | None = None,
        tenant: str | None = None,
    ) -> None:
        self._config = config
        self.tenant = tenant  # whose statements (None: the default tenant's)
        # The version to ask storage in: one it speaks (the served list, narrowed to
        # storage's own), else a 1.0.3-only LRS would refuse every question.
        self._storage_version = storage_version or (lambda: config.xapi.versions[0])
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # the workers' jitter
        self._observe = observe
        self._storage = storage
        self.outbox: Outbox = outbox_for(config, clock=clock, tenant=tenant)
        self._active = [t for t in config.forwardings if t.is_active]
        self._limits = [(t.label, t.backlog_limit) for t in self._active]
        self._filters: dict[str, StatementFilter] = {}  # compiled by start()
        self.workers: list[TargetWorker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = self._clock.now()
        self.snapshot: dict[str, TargetStats] = {}
        # Pending rows whose request still waits for storage: the resolver must not touch
        # them, or it could drop one storage is about to accept (or queue one twice).
        self._in_flight: set[int] = set()
        self._settling = FailureLog(
            log, "outbox: settling writes (the resolver retries them)", clock=clock
        )

    async def start(self) -> None:
        """Open the outbox, start a worker per active target, the resolver and the GC."""
        # Checked by the configuration already; a profile file is read: off the loop.
        self._filters = await asyncio.to_thread(self._compile_filters)
        await self.outbox.open()
        # Before the first statement: a backfill's history ends where live forwarding began.
        live = [t.label for t in self._active]
        await self.outbox.call(lambda tx: tx.went_live(live))
        self._started_at = self._clock.now()
        for target in self._active:
            worker = TargetWorker(
                target,
                self.outbox,
                observe=self._observe,
                clock=self._clock,
                rng=self._rng,
                statement_filter=self._filters.get(target.label),
                voided_lookup=self._voided,
            )
            self.workers.append(worker)
            self._tasks.append(asyncio.create_task(worker.run(), name=f"forward-{worker.name}"))
        self._tasks.append(asyncio.create_task(self._resolve_pending(), name="outbox-resolve"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="outbox-housekeeping"))
        log.info(
            "forwarding to %d targets: %s",
            len(self.workers),
            ", ".join(w.name for w in self.workers) or "-",
        )

    def _compile_filters(self) -> dict[str, StatementFilter]:
        base = Path(self._config.base_dir)
        return {
            t.label: StatementFilter.compile(t.filter, base)
            for t in self._active
            if t.filter is not None
        }

    async def stop(self) -> None:
        """Stop the background work; what is queued stays in the outbox for next time."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            worker.close()
        await self.outbox.close()

    # -- the request path ---------------------------------------------------------------

    async def record_pending(
        self, items: Sequence[tuple[str, bytes, bytes | None]], version: str | None = None
    ) -> list[int]:
        """Before storage sees them: (id, exact bytes, attachment parts) recorded durably.

        The caller must call `settled` when it stops waiting for storage, whatever happened.
        """
        seqs = await self.outbox.call(WritePending(items, version))
        self._in_flight.update(seqs)
        return seqs

    def settled(self, seqs: Sequence[int]) -> None:
        """The request no longer waits: from now on the resolver may settle what is left."""
        self._in_flight.difference_update(seqs)

    async def accepted(
        self,
        seqs: Sequence[int],
        statements: Sequence[Any] | None = None,
        version: str | None = None,
    ) -> None:
        """Storage accepted them: queue each for the active targets whose filter takes it.

        Without `statements` (the resolver) every target gets them, and each target's
        worker applies its filter as it sends. A voiding statement goes to every filtered
        target too: its worker sends it only where the statement it voids went. The
        client does not wait for this commit: were it lost (a crash), the rows stay
        pending and the resolver finds them in storage, as for a lost answer.
        """
        if statements is None or not self._filters:
            await self.outbox.submit(MarkReady(seqs, self._limits), self._queued)
            return
        groups: dict[tuple[tuple[str, int], ...], list[int]] = {}
        kept_from: dict[str, int] = {}
        for seq, statement in zip(seqs, statements, strict=True):
            if voided_id(statement) is not None:
                chosen = tuple(self._limits)
            else:
                chosen = tuple(
                    limit
                    for limit in self._limits
                    # The cheap conditions only: a profile's templates are the worker's.
                    if (check := self._filters.get(limit[0])) is None
                    or check.quick(statement, version)
                )
                for name in self._filters.keys() - {target for target, _ in chosen}:
                    kept_from[name] = kept_from.get(name, 0) + 1
            groups.setdefault(chosen, []).append(seq)
        counted = tuple(kept_from.items())
        for index, (targets, group) in enumerate(groups.items()):
            # The counts ride with one of the groups: one commit either way.
            await self.outbox.submit(
                MarkReady(group, targets, counted if index == 0 else ()), self._queued
            )

    async def refused(self, seqs: Sequence[int]) -> None:
        """Storage refused them: nothing to forward (the resolver's to drop, if lost)."""
        await self.outbox.submit(Drop(seqs), self._queued)

    def _queued(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and (error := done.exception()) is not None:
            self._settling.failed(error)
        for worker in self.workers:
            worker.wake()

    # -- background ---------------------------------------------------------------------

    async def _voided(self, statement_id: str) -> dict[str, Any] | None:
        """The statement a voiding one voids, from storage; None when storage has none.

        Asked as `voidedStatementId`, then as `statementId` (an LRS that does not void
        keeps serving it so; one that ignores `voidedStatementId` answers a list, whose
        other statements are never taken for it). Raises GatewayError when storage cannot
        tell now (the worker asks again later).
        """
        for parameter in ("voidedStatementId", "statementId"):
            found = await self._statement_by(parameter, statement_id)
            if found is not None:
                return found
        return None

    async def _statement_by(self, parameter: str, statement_id: str) -> dict[str, Any] | None:
        """The statement storage answers for `parameter`=id; None for 404 or another's.

        Raises GatewayError for any other answer, ValueError for one that is not JSON.
        """
        headers = {"X-Experience-API-Version": self._storage_version()}
        async with self._storage.request(
            "GET",
            "statements",
            raw_query=f"{parameter}={statement_id}",
            headers=headers,
            decompress=True,
        ) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise UpstreamUnavailable(
                    f"storage answered HTTP {response.status} about statement {statement_id}"
                )
            data: Any = json.loads(await response.read())
        listed = data.get("statements") if isinstance(data, dict) else None
        candidates = listed if isinstance(listed, list) else [data]
        for candidate in candidates:
            # UUIDs compare without regard to case: an LRS may store them lower-cased.
            if isinstance(candidate, dict) and str(candidate.get("id", "")).lower() == (
                statement_id.lower()
            ):
                return candidate
        return None

    async def _in_storage(self, statement_id: str) -> bool | None:
        """Whether storage holds the statement; None when it cannot tell now."""
        try:
            return await self._statement_by("statementId", statement_id) is not None
        except (GatewayError, ValueError):
            return None

    async def resolve_once(self) -> int:
        """Settle writes left pending by a crash or a lost answer; how many were settled."""
        threshold = self._config.outbox.resolve_pending_after
        before = self._clock.now() - threshold
        if not self.outbox.shared:
            # Rows from before this start have no request waiting for them any more. A
            # shared outbox's may be another replica's, still waiting: only age tells.
            before = max(self._started_at, before)
        settled = 0
        rows = await self.outbox.read(lambda s: s.pending(before))
        for seq, statement_id in rows:
            if seq in self._in_flight:
                continue
            present = await self._in_storage(statement_id)
            if present is None:
                continue  # storage cannot tell now: next round
            await (self.accepted([seq]) if present else self.refused([seq]))
            settled += 1
        if settled:
            log.info("outbox: %d pending statements settled against storage", settled)
        return settled

    async def _resolve_pending(self) -> None:
        failing = FailureLog(log, "outbox: settling pending statements", clock=self._clock)
        while True:
            try:
                await self.resolve_once()
            except Exception as exc:  # storage or the outbox: next round
                failing.failed(exc)
            await self._clock.sleep(max(1.0, self._config.outbox.resolve_pending_after / 2))

    async def _housekeeping(self) -> None:
        last_gc = self._clock.monotonic()
        failing = FailureLog(log, "outbox: reading its figures", clock=self._clock)
        while True:
            try:
                self.snapshot = await self.status()
                if self._clock.monotonic() - last_gc >= _GC_INTERVAL:
                    last_gc = self._clock.monotonic()
                    await self.outbox.call(lambda tx: tx.collect_garbage())
            except Exception as exc:  # the outbox: stale figures until it answers again
                failing.failed(exc)
            await self._clock.sleep(_SNAPSHOT_INTERVAL)

    async def status(self) -> dict[str, TargetStats]:
        """Fresh per-target figures (configured targets first, then any the outbox knows)."""
        names = [t.label for t in self._config.forwardings]

        async def query(tx: OutboxTransaction) -> dict[str, TargetStats]:
            known = names + [t for t in await tx.targets() if t not in names]
            return await tx.stats(known)

        return await self.outbox.read(query)

    async def replay(self, target: str) -> int:
        """Move `target`'s dead letters in this outbox back into its queue; how many."""
        moved = 0
        while True:
            count = await self.outbox.call(
                lambda s: s.requeue(target, transient_only=False, limit=REPLAY_CHUNK)
            )
            if not count:
                break
            moved += count
        for worker in self.workers:
            if worker.name == target:
                worker.wake()
        return moved

    @property
    def target_names(self) -> list[str]:
        """The targets its configuration names (active or not)."""
        return [t.label for t in self._config.forwardings]

    def failed(self) -> dict[str, int]:
        """Failed sends per target since start."""
        return {worker.name: worker.failed for worker in self.workers}

    def target_up(self) -> dict[str, bool]:
        """Whether each active target is up, as its worker knows it now."""
        return {worker.name: worker.up for worker in self.workers}

    @staticmethod
    def as_json(stats: dict[str, TargetStats]) -> dict[str, Any]:
        """The status as a JSON-able document."""
        return {"targets": {name: asdict(figures) for name, figures in stats.items()}}
