"""Several worker processes on one port: what workers share, and how they reach each other.

`serve --workers N` starts N copies of the gateway, each bound to the same address with
SO_REUSEPORT (the kernel spreads connections over them). Workers share nothing while
serving: each has its own outbox (worker 0 the configured `data_dir`, worker i
`data_dir/worker-i`), so each forwards what it accepted, durably, as a single process
would. Metrics live in prometheus-client's multiprocess files, in a directory the
supervisor makes fresh and names to each worker (PROMETHEUS_MULTIPROC_DIR) before it
starts: a scrape answered by any worker reads every worker's files, the dead ones' counters
included, and every outbox (gateway.http.metrics). The forwarding status, answered by any
worker, adds up every worker's, fetched over a Unix socket per worker in a private
directory; what every worker must do at once (lift a lockout) is asked of each over the
same sockets. The supervisor (gateway.runtime.supervisor) restarts a worker that dies and
stops all of them on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.forwarding.forwarder import OUTBOX_FILE
from gateway.forwarding.store import OutboxStore

__all__ = [
    "SiblingCommands",
    "WorkerRole",
    "merged_status",
    "outbox_dirs",
    "retire_outboxes",
    "retired_status",
    "shared_data_dir",
    "sibling_command",
    "sibling_documents",
    "worker_data_dir",
]

log = logging.getLogger(__name__)

SIBLING_TIMEOUT = 2.0  # seconds a status request waits for another worker's figures


Command = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class SiblingCommands:
    """What this worker does when a sibling asks (`POST /commands/NAME` on its socket)."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def register(self, name: str, command: Command) -> None:
        """Answer `name` with `command(payload)`."""
        self._commands[name] = command

    async def handle(self, request: web.Request) -> web.Response:
        """The socket's handler: run the named command with the JSON payload."""
        command = self._commands.get(request.match_info["name"])
        if command is None:
            return web.json_response({"error": "unknown command"}, status=404)
        return web.json_response(await command(await request.json()))


@dataclass(frozen=True)
class WorkerRole:
    """Which of how many workers this process is, and where the workers' sockets live."""

    index: int
    count: int
    run_dir: Path
    supervisor: int  # pid: a worker whose supervisor is gone stops
    commands: SiblingCommands = field(default_factory=SiblingCommands, compare=False, repr=False)

    def socket(self, index: int) -> Path:
        """The Unix socket on which worker `index` answers its siblings."""
        return self.run_dir / f"worker-{index}.sock"

    @property
    def metrics_dir(self) -> Path:
        """Where every worker keeps its metric values (prometheus-client multiprocess files)."""
        return metrics_dir(self.run_dir)

    @property
    def siblings(self) -> list[int]:
        """The other workers' indexes."""
        return [i for i in range(self.count) if i != self.index]


def worker_data_dir(data_dir: str, index: int) -> str:
    """Worker 0 keeps the configured data_dir (so a single process's outbox carries over)."""
    return data_dir if index == 0 else str(Path(data_dir) / f"worker-{index}")


def metrics_dir(run_dir: Path) -> Path:
    """The workers' shared metrics directory in the supervisor's run directory."""
    return run_dir / "metrics"


def shared_data_dir(data_dir: Path, role: WorkerRole) -> Path:
    """The configured data_dir, from the one this worker keeps its outbox in."""
    return data_dir.parent if role.index > 0 else data_dir  # worker i: data_dir/worker-i


def outbox_dirs(data_dir: Path) -> list[Path]:
    """The data directory and every worker's under it, whether or not they hold an outbox."""
    extra = sorted(
        (p for p in data_dir.glob("worker-*") if p.is_dir()), key=lambda p: (len(p.name), p.name)
    )
    return [data_dir, *extra]


def _retired_outboxes(data_dir: Path, count: int) -> list[Path]:
    """Outbox files of workers at index `count` or beyond (an earlier run had more)."""
    found = []
    for directory in outbox_dirs(data_dir)[1:]:
        index = directory.name.removeprefix("worker-")
        path = directory / OUTBOX_FILE
        if index.isdigit() and int(index) >= count and path.exists():
            found.append(path)
    return found


def retire_outboxes(data_dir: Path, count: int) -> None:
    """At start: outboxes no worker of this run forwards from have no target down.

    They hold no backlog (a start that would strand one is refused), so a target state
    left there would say "down" for ever, in the status and in the CLI alike.
    """
    for path in _retired_outboxes(data_dir, count):
        store = OutboxStore(path)
        try:
            store.conn.execute("DELETE FROM target_states")
        finally:
            store.close()


def retired_status(data_dir: Path, count: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """Status documents of the retired outboxes: their deliveries and dead letters still count.

    So `/admin/forwarding` adds up what `lrs-gateway forwarding status` does.
    """
    documents = []
    for path in _retired_outboxes(data_dir, count):
        store = OutboxStore(path)
        try:
            known = [*names, *(t for t in store.targets() if t not in names)]
            documents.append({"targets": {n: asdict(s) for n, s in store.stats(known).items()}})
        finally:
            store.close()
    return documents


def stranded_backlogs(data_dir: Path, count: int) -> dict[Path, int]:
    """Outboxes of workers beyond `count` that still hold statements to forward.

    Run with fewer workers than before (or none: the outbox moved to PostgreSQL), nobody
    would forward them: the caller refuses to start instead.
    """
    stranded: dict[Path, int] = {}
    for directory in outbox_dirs(data_dir)[1 if count else 0 :]:
        index = "0" if directory == data_dir else directory.name.removeprefix("worker-")
        path = directory / OUTBOX_FILE
        if not index.isdigit() or int(index) < count or not path.exists():
            continue
        store = OutboxStore(path)
        try:
            backlog = sum(s.backlog for s in store.stats(store.targets()).values())
            backlog += len(store.pending(time.time() + 1))  # not yet settled against storage
        finally:
            store.close()
        if backlog:
            stranded[directory] = backlog
    return stranded


async def sibling_documents(role: WorkerRole, path: str) -> tuple[list[bytes], int]:
    """GET `path` from every other worker's socket: (bodies, workers that did not answer)."""

    async def fetch(index: int) -> bytes | None:
        connector = aiohttp.UnixConnector(path=str(role.socket(index)))
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.get(f"http://worker-{index}{path}") as response,
            ):
                return await response.read() if response.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    answers = await asyncio.gather(*(fetch(i) for i in role.siblings))
    bodies = [body for body in answers if body is not None]
    return bodies, len(answers) - len(bodies)


async def sibling_command(
    role: WorkerRole, name: str, payload: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """Run command `name` on every other worker: (their answers, workers that did not answer)."""

    async def ask(index: int) -> dict[str, Any] | None:
        connector = aiohttp.UnixConnector(path=str(role.socket(index)))
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.post(f"http://worker-{index}/commands/{name}", json=payload) as response,
            ):
                if response.status != 200:
                    return None
                answer = await response.json()
                return answer if isinstance(answer, dict) else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    answers = await asyncio.gather(*(ask(i) for i in role.siblings))
    done = [answer for answer in answers if answer is not None]
    return done, len(answers) - len(done)


async def serve_siblings(role: WorkerRole, app: web.Application) -> AsyncIterator[None]:
    """Answer the other workers on this worker's socket; stop when the supervisor is gone."""
    app.router.add_post("/commands/{name}", role.commands.handle)
    path = role.socket(role.index)
    path.unlink(missing_ok=True)  # left by this worker's previous life
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    watcher = asyncio.create_task(watch_supervisor(role), name="watch-supervisor")
    try:
        yield
    finally:
        watcher.cancel()
        await runner.cleanup()


PARENT_CHECK_INTERVAL = 1.0


async def watch_supervisor(role: WorkerRole) -> None:
    """Stop this worker (as SIGTERM would) once its supervisor is gone, even if killed."""
    # No event to wait for: the kernel just reparents an orphan.
    while os.getppid() == role.supervisor:  # noqa: ASYNC110
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    log.warning("worker %d: the supervisor (pid %d) is gone; stopping", role.index, role.supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def _merge_figure(key: str, mine: Any, theirs: Any) -> Any:
    """One figure of a target as two workers report it, as a single process would."""
    if key == "oldest_age":
        ages = [a for a in (mine, theirs) if a is not None]
        return max(ages) if ages else None
    if key == "up":  # up only if every worker's deliveries get through
        return bool(mine) and bool(theirs)
    if key == "state":
        return "down" if "down" in (mine, theirs) else mine
    if key == "down_since":  # the earliest: how long the target has been failing someone
        times = [t for t in (mine, theirs) if t is not None]
        return min(times) if times else None
    if key in ("last_error", "backfill"):  # a backfill lives in one worker's outbox
        return mine if mine is not None else theirs
    if isinstance(theirs, int | float) and not isinstance(theirs, bool):
        return (mine or 0) + theirs
    return mine


def merged_status(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Forwarding status documents of several workers as one.

    Counts add up; the oldest age is the largest; a target is up only when every worker
    says so (`state` down if any says down), down since the earliest, with the first error;
    a backfill is the one worker's whose outbox has it.
    """
    targets: dict[str, dict[str, Any]] = {}
    for document in documents:
        for name, figures in document.get("targets", {}).items():
            merged = targets.get(name)
            if merged is None:
                targets[name] = dict(figures)
                continue
            for key, value in figures.items():
                merged[key] = _merge_figure(key, merged.get(key), value)
    return {"targets": targets}
