"""`forwarding status` and `forwarding replay` on the PostgreSQL outbox every replica shares.

The same operations the gateway runs, through a connection of the command's own; a replay
goes a chunk per transaction, so the replicas' deliveries go on in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from gateway.config.settings import Config
from gateway.forwarding.outboxes import outbox_for
from gateway.forwarding.store import REPLAY_CHUNK
from gateway.forwarding.transaction import Outbox, OutboxTransaction

__all__ = ["replay", "status_document"]


async def _opened(config: Config) -> Outbox:
    # Never migrates: a command reading figures must not change the schema under replicas.
    outbox = outbox_for(config, migrate=False)
    await outbox.open()
    return outbox


def status_document(config: Config) -> dict[str, Any]:
    """{"targets": {name: figures}}: configured targets first, then any the outbox knows."""
    names = [t.label for t in config.forwardings]

    async def query(tx: OutboxTransaction) -> dict[str, Any]:
        known = names + [t for t in await tx.targets() if t not in names]
        return {"targets": {n: asdict(s) for n, s in (await tx.stats(known)).items()}}

    async def run() -> dict[str, Any]:
        outbox = await _opened(config)
        try:
            return await outbox.call(query)
        finally:
            await outbox.close()

    return asyncio.run(run())


def replay(config: Config, target: str, on_progress: Callable[[int], None]) -> int:
    """Move every dead letter of `target` back into its queue; how many moved."""

    async def run() -> int:
        outbox = await _opened(config)
        moved = 0
        try:
            while count := await outbox.call(
                lambda tx: tx.requeue(target, transient_only=False, limit=REPLAY_CHUNK)
            ):
                moved += count
                on_progress(moved)
        finally:
            await outbox.close()
        return moved

    return asyncio.run(run())
