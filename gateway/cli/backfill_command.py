"""`lrs-gateway forwarding backfill`: copy storage's history to a target, resumably.

The command pages storage itself and queues what it finds in the target's outbox (the
SQLite file of data_dir, or the PostgreSQL outbox every replica shares); the running
gateway's worker for that target delivers it. See gateway.forwarding.backfill.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from gateway.config.settings import Config
from gateway.errors import GatewayError
from gateway.forwarding.backfill import (
    BOUNDARY_MARGIN,
    Backfill,
    BackfillError,
    BackfillLost,
    Progress,
    default_until,
    holder_gone,
    iso_time,
    parse_time,
)
from gateway.forwarding.outboxes import OUTBOX_FILE, outbox_for
from gateway.forwarding.store import (
    BACKFILL_STALE,
    BackfillBusy,
    BackfillState,
    LiveStart,
    OutboxStore,
)
from gateway.forwarding.transaction import Outbox
from gateway.store.databases import is_postgres
from gateway.upstream.storage import StorageClient
from gateway.upstream.target import storage_target

__all__ = ["add_parser"]

Load = Callable[[argparse.Namespace], Config]


def add_parser(commands: Any, command: Callable[..., argparse.ArgumentParser], load: Load) -> None:
    """`forwarding backfill` under the `forwarding` command."""
    parser = command(
        commands,
        "backfill",
        lambda args: run(args, load),
        "copy the storage LRS's statements to a target (resumable; the gateway delivers)",
    )
    parser.add_argument("--target", required=True, help="the target's name")
    parser.add_argument("--tenant", help="a tenant's target (its storage and outbox)")
    parser.add_argument(
        "--since", help="only statements stored after this time (ISO 8601; default: all)"
    )
    parser.add_argument(
        "--until",
        help="only statements stored up to this time (default: a minute after live "
        "forwarding to the target began, which the outbox keeps; what live forwarding sent "
        "is skipped)",
    )
    parser.add_argument(
        "--max-rate", type=float, help="statements queued per second at most (default: no limit)"
    )
    parser.add_argument(
        "--page-size", type=int, default=500, help="statements asked of storage at a time"
    )
    parser.add_argument(
        "--ahead",
        type=int,
        default=5000,
        help="pause while the target's backlog is this large (the outbox stays small)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="start over instead of resuming an unfinished one"
    )
    parser.add_argument(
        "--wait", action="store_true", help="then wait until what it queued is delivered"
    )


def run(args: argparse.Namespace, load: Load) -> int:
    """The command: 0 done, 1 refused or failed, 130 interrupted (run it again to resume)."""
    root = load(args)
    config = root
    if args.tenant:
        if args.tenant not in {t.name for t in root.tenants}:
            return _error(f"no tenant named {args.tenant!r}")
        config = root.tenant(args.tenant)
    targets = {t.label: t for t in config.forwardings}
    target = targets.get(args.target)
    if target is None:
        return _error(
            f"no forwarding target named {args.target!r} (known: "
            f"{', '.join(sorted(targets)) or 'none'})"
        )
    if not target.is_active:
        return _error(f"{args.target} is not active: no worker would deliver what is queued")
    moments: dict[str, str | None] = {}
    for flag, value in (("--since", args.since), ("--until", args.until)):
        moments[flag] = None
        if value is not None:
            try:
                # As storage is asked, and compared with a backfill's range as kept.
                moments[flag] = iso_time(parse_time(value))
            except ValueError:
                return _error(f"{flag}: {value!r} is not an ISO 8601 timestamp")
    if args.max_rate is not None and args.max_rate <= 0:
        return _error("--max-rate must be more than 0")
    if args.page_size < 1:
        return _error("--page-size must be 1 or more")
    try:
        return asyncio.run(_backfill(root, config, args, moments["--since"], moments["--until"]))
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: `forwarding backfill --target {args.target}` again resumes "
            "where it stopped",
            file=sys.stderr,
        )
        return 130
    except (GatewayError, sqlite3.Error, OSError) as exc:
        # The outbox (its database) failed: nothing half-done stays, the cursor is kept.
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        return _error(f"the outbox: {message} (run the command again to resume)")


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _busy(target: str) -> int:
    return _error(
        f"another backfill of {target} is running (run this again once it stops; an "
        "interrupted one is taken over after a minute)"
    )


async def _backfill(
    root: Config, config: Config, args: argparse.Namespace, since: str | None, until: str | None
) -> int:
    # Never migrates PostgreSQL: the replicas' schema is `store migrate`'s to change.
    outbox = outbox_for(config, migrate=False, tenant=args.tenant)
    await outbox.open()
    try:
        starts = await _live_starts(root, args.tenant, outbox, args.target)
        found = await outbox.read(lambda tx: tx.backfill(args.target))
        if until is None:
            try:
                until = default_until(starts, args.target, time.time())
            except BackfillError as exc:
                if found is None or found.state != "running" or args.restart:
                    return _error(str(exc))
                until = found.until  # resuming: the range it began with
        if (
            found is not None
            and found.state == "done"
            and not args.restart
            and (found.since, found.until) == (since, until)
        ):
            print(
                f"{args.target}: this backfill is done already ({found.queued} statements "
                "queued); --restart does it again"
            )
            return 0
        if (
            found is not None
            and found.state == "running"
            and not args.restart
            and (found.since, found.until) != (since, until)
        ):
            print(
                f"{args.target}: resuming the unfinished backfill of "
                f"({found.since or 'the beginning'}, {found.until}]; --restart starts "
                "this one instead",
                file=sys.stderr,
            )
        if (
            found is not None
            and found.status(time.time()) == "running"
            and not holder_gone(found.holder)
        ):
            return _busy(args.target)  # now, rather than after the wait below
        # Statements stored up to `until` may still be on their way to storage and to live
        # forwarding's first ids: the boundary is read once every one of them has landed.
        resumed = found is not None and found.state == "running" and not args.restart
        settle = _settled_at(config, found.until if resumed and found is not None else until)
        wait = settle - time.time()
        if wait > BOUNDARY_MARGIN + _request_limit(config):
            return _error(f"--until {until} is in the future: a backfill ends at a moment passed")
        if wait > 0:
            print(
                f"{args.target}: waiting {wait:.0f} s for what storage stored up to the "
                "boundary with live forwarding to land",
                file=sys.stderr,
            )
            await asyncio.sleep(wait)
            starts = await _live_starts(root, args.tenant, outbox, args.target)
        skip = frozenset().union(*(start.window_ids for start in starts))
        display = _Display(sys.stderr)
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            storage = StorageClient(session, storage_target(config.storage))
            try:
                job = Backfill(
                    outbox,
                    storage,
                    args.target,
                    version=config.xapi.versions[0],
                    page_size=args.page_size,
                    ahead=args.ahead,
                    max_rate=args.max_rate,
                    skip_ids=skip,
                    on_progress=display.show,
                    # A run killed on this host needs no minute of silence to be taken over.
                    stale_after=0.0
                    if found is not None and holder_gone(found.holder)
                    else BACKFILL_STALE,
                )
                state = await job.run(since, until, restart=args.restart)
            except BackfillBusy:
                return _busy(args.target)
            except BackfillLost as exc:
                display.end()
                return _error(str(exc))
            except BackfillError as exc:
                display.end()
                return _error(f"{exc} (run the command again to resume)")
            finally:
                storage.close()
        display.end()
        print(
            f"{args.target}: backfill done: {state.queued} statements queued, "
            f"{state.skipped} left to live forwarding, up to {state.until}"
        )
        if args.wait:
            await _wait_delivered(outbox, args.target, display)
        return 0
    finally:
        await outbox.close()


async def _live_starts(
    root: Config, tenant: str | None, outbox: Outbox, target: str
) -> list[LiveStart]:
    """What every outbox of the target's tenant knows of its live start (every worker's)."""
    if is_postgres(root):
        return [await outbox.read(lambda tx: tx.live_start(target))]
    from gateway.runtime.workers import outbox_dirs

    # A worker's outboxes: data_dir/worker-N/OUTBOX_FILE, data_dir/worker-N/tenants/T/...
    below = Path("tenants", tenant, OUTBOX_FILE) if tenant else Path(OUTBOX_FILE)
    paths = [
        d / below for d in outbox_dirs(root.resolve_path(root.data_dir)) if (d / below).exists()
    ]

    def read() -> list[LiveStart]:
        starts = []
        for path in paths:
            store = OutboxStore(path, synchronous=root.outbox.synchronous)
            try:
                starts.append(store.live_start(target))
            finally:
                store.close()
        return starts

    return await asyncio.to_thread(read)


async def _wait_delivered(outbox: Outbox, target: str, display: _Display) -> None:
    """Until what the backfill queued is delivered (live statements after it may wait)."""
    finished = time.time()
    while True:
        figures = (await outbox.read(lambda tx: tx.stats([target])))[target]
        oldest = figures.oldest_age
        if oldest is None or time.time() - oldest > finished:
            break  # the oldest statement owed is newer than the backfill's last page
        display.line(f"{target}: delivering, {figures.backlog} statements in its backlog")
        await asyncio.sleep(1.0)
    display.end()
    print(f"{target}: everything the backfill queued is delivered (or dead-lettered)")


def _request_limit(config: Config) -> float:
    """The longest a statement write may take from storage's answer to the outbox."""
    return config.storage.timeout + config.limits.upstream_queue_timeout + 1.0


def _settled_at(config: Config, until: str) -> float:
    """When every statement stored up to `until` has been queued live, if it was."""
    return parse_time(until).timestamp() + _request_limit(config)


class _Display:
    """A progress bar on a terminal; a line every 10 seconds otherwise (logs, CI)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0
        self._drawn = False

    def show(self, progress: Progress) -> None:
        """Draw where the backfill is."""
        state = progress.state
        now = time.monotonic()
        if not self._tty and now - self._last < 10.0 and state.state != "done":
            return
        self._last = now
        self.line(_describe(state, progress))

    def line(self, text: str) -> None:
        """Replace the bar (a terminal) or print a line."""
        if self._tty:
            self._stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def end(self) -> None:
        """Leave the bar's line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def _describe(state: BackfillState, progress: Progress) -> str:
    width = 24
    fraction = state.fraction
    filled = int(width * fraction)
    eta = "-" if progress.eta is None else _duration(progress.eta)
    text = (
        f"{state.target} [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
        f"{state.queued} queued, {state.skipped} sent live, {progress.rate:.0f}/s, ETA {eta}"
    )
    if progress.waiting:
        text += f" (waiting: {progress.waiting})"
    return text


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
