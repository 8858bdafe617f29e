"""The supervisor of `serve --workers N`: starts the workers, restarts one that dies, stops all.

Each worker is a new interpreter running our own command with `--worker i/N`; the
supervisor names the metrics directory to it (PROMETHEUS_MULTIPROC_DIR) before it imports
anything, and on a worker's death removes that worker's live gauge files (its counters stay
in the sum). SIGTERM/SIGINT stop every worker, waiting for them to drain.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from gateway.runtime.workers import metrics_dir

__all__ = ["supervise", "worker_command"]

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when first imported
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)  # after a worker dies, by consecutive deaths
QUICK_DEATH = 10.0  # a worker dying sooner than this after its start counts as failing
MAX_QUICK_DEATHS = 5  # consecutive quick deaths of one worker before the supervisor gives up


class _Supervisor:
    def __init__(
        self, command: Sequence[str], count: int, run_dir: Path, stop_timeout: float
    ) -> None:
        self._command = list(command)
        self._count = count
        self._run_dir = run_dir
        self._stop_timeout = stop_timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = {}
        self._stopping = False
        self._metrics_dir = metrics_dir(run_dir)
        self._metrics_dir.mkdir()  # fresh with the run dir: totals start at 0 with the run

    def _start(self, index: int) -> None:
        command = [
            *self._command,
            "--worker",
            f"{index}/{self._count}",
            "--run-dir",
            str(self._run_dir),
            "--supervisor",
            str(os.getpid()),
        ]
        # A new interpreter: prometheus-client picks its file-backed values at import.
        env = {**os.environ, MULTIPROC_ENV: str(self._metrics_dir)}
        # Our own interpreter and arguments, nothing from outside.
        self._children[index] = subprocess.Popen(  # noqa: S603
            command, stdin=subprocess.DEVNULL, env=env
        )
        self._started[index] = time.monotonic()

    def _buried(self, child: subprocess.Popen[bytes]) -> None:
        """A dead worker's live gauges (in flight, ready) go; its counters stay in the sum."""
        try:
            path = str(self._metrics_dir)
            mark_process_dead(child.pid, path)  # type: ignore[no-untyped-call]
        except OSError as exc:
            log.error("worker pid %d: removing its live gauge files failed: %s", child.pid, exc)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            return self._supervise()
        finally:  # whatever happened here, no worker is left behind
            self._stop_all()

    def _supervise(self) -> int:
        for index in range(self._count):
            self._start(index)
        log.info(
            "supervising %d workers (pids %s)",
            self._count,
            ", ".join(str(c.pid) for c in self._children.values()),
        )
        restart_at: dict[int, float] = {}
        code = 0
        while not self._stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for index, child in list(self._children.items()):
                status = child.poll()
                if status is None or index in restart_at:
                    continue
                self._buried(child)
                lived = now - self._started[index]
                deaths = self._quick_deaths.get(index, 0) + 1 if lived < QUICK_DEATH else 1
                self._quick_deaths[index] = deaths
                if deaths > MAX_QUICK_DEATHS:
                    log.error("worker %d keeps dying at start (status %s): stopping", index, status)
                    self._stopping, code = True, 1
                    break
                delay = RESTART_DELAYS[min(deaths, len(RESTART_DELAYS)) - 1]
                log.warning(
                    "worker %d (pid %d) exited with status %s; restarting it in %.1f s",
                    index,
                    child.pid,
                    status,
                    delay,
                )
                restart_at[index] = now + delay
            for index, when in list(restart_at.items()):
                if not self._stopping and now >= when:
                    del restart_at[index]
                    self._start(index)
        return code

    def _stop_all(self) -> None:
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout + 5
        for child in self._children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time: killing it", child.pid)
                child.kill()
                child.wait()


def supervise(command: Sequence[str], count: int, *, stop_timeout: float) -> int:
    """Run `command --worker i/N --run-dir DIR` for each of `count` workers until signalled."""
    run_dir = Path(tempfile.mkdtemp(prefix="lrs-gateway-workers-"))
    os.chmod(run_dir, 0o700)  # the sockets serve metrics without credentials
    try:
        return _Supervisor(command, count, run_dir, stop_timeout).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def worker_command(argv: Sequence[str]) -> list[str]:
    """A worker's command line: the supervisor's arguments without `--workers`."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        kept.append(arg)
    return [sys.executable, "-m", "gateway", *kept]
