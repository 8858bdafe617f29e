"""Run a real Redis server (Debian's `redis-server`, /usr/bin/redis-server) for the tests.

`run_redis()` starts it on a free loopback port as a child process, yields a `RedisServer`
once it answers PING, and stops it at exit (whatever happened before) with nothing of it
left running. `deploy/bootstrap.sh` installs the package when missing.

It keeps nothing on disk (`--save ''`, `--appendonly no`): a `stop()` then `start()` gives
back an empty server on the same port, as a real Redis without persistence would be after
a restart. It listens on 127.0.0.1 only (protected mode on), no password, no Unix socket.

Like the PostgreSQL part, it never runs as root, for consistency (Redis itself would run as
root): when the tests run as root, it runs as the `redis` system user the Debian package
creates (else `nobody`), through `subprocess.Popen(user=, group=, extra_groups=[])`, so the
child's pid is the server's own; its working directory is then a private directory under
the system temporary directory (0700, owned by that user; pytest's are closed to it),
removed at exit. The log stays in `workdir`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .postgres import RunAs, private_dir, unprivileged_user
from .process import free_port, log_tail, stop_process, wait_for_interrupt

__all__ = ["REDIS_SERVER", "RedisError", "RedisServer", "run_redis"]

PACKAGE = "redis-server"
REDIS_SERVER = Path("/usr/bin/redis-server")
HOST = "127.0.0.1"
RUN_AS_CANDIDATES = ("redis", "nobody")
"""Users the server runs as when the tests run as root, first existing one wins."""

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 5.0
POLL_INTERVAL = 0.05


class RedisError(RuntimeError):
    """Redis could not be found, started or told something."""


def _resp(*args: str) -> bytes:
    """Encode a command as a RESP array of bulk strings."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def command(port: int, *args: str, timeout: float = COMMAND_TIMEOUT) -> bytes:
    """Send one command on a fresh connection; return the first line of the reply.

    Enough for the simple replies (`+PONG`, `+OK`, `-ERR ...`) this module needs, with no
    client library: the fixture must not depend on the client the gateway uses.
    Raises `OSError` when nothing answers.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_resp(*args))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"Redis on {HOST}:{port} closed the connection")
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


class _RedisProcess:
    """The one mutable part of a `RedisServer`: its current process."""

    def __init__(
        self, workdir: Path, port: int, log_file: Path, run_as: RunAs | None, timeout: float
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.log_file = log_file
        self.run_as = run_as
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def argv(self) -> list[str]:
        return [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--bind", HOST,
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    def start(self) -> None:
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                return
            log: IO[bytes]
            with self.log_file.open("ab") as log:
                process = subprocess.Popen(
                    self.argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    user=None if self.run_as is None else self.run_as.uid,
                    group=None if self.run_as is None else self.run_as.gid,
                    extra_groups=None if self.run_as is None else [],
                )
            self.process = process
            try:
                self._wait_ready(process)
            except BaseException:
                self._stop_locked()
                raise

    def stop(self) -> None:
        with self.lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)  # SIGTERM: a clean shutdown (nothing to save), then SIGKILL

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Poll PING until `+PONG`, or fail with the log tail."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RedisError(
                    f"redis-server exited with status {process.returncode} before answering "
                    f"on {HOST}:{self.port}; log {self.log_file}:\n{log_tail(self.log_file)}"
                )
            try:
                if command(self.port, "PING", timeout=1.0) == b"+PONG":
                    return
            except OSError:
                pass
            time.sleep(POLL_INTERVAL)
        raise RedisError(
            f"redis-server did not answer PING on {HOST}:{self.port} within "
            f"{self.timeout:.0f} s; log {self.log_file}:\n{log_tail(self.log_file)}"
        )


@dataclass(frozen=True)
class RedisServer:
    """A running Redis server on loopback, database 0 by default, no password."""

    host: str
    """Always 127.0.0.1: the server listens there only."""
    port: int
    """Kept across `stop()`/`start()`."""
    url: str
    """`redis://127.0.0.1:PORT/0` (`redis.asyncio.from_url(url)`)."""
    log_file: Path
    workdir: Path
    """Its `--dir` (and working directory); nothing is written there."""
    run_as: str | None
    """The system user it runs as because the tests run as root; None: the current user."""
    _process: _RedisProcess = field(repr=False, compare=False)

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        process = self._process.process
        return process.pid if process is not None and process.poll() is None else None

    def stop(self) -> None:
        """Stop the server (open connections are cut); a no-op when stopped."""
        self._process.stop()

    def start(self) -> None:
        """Start it again on the same port, empty; return once it answers PING.

        A no-op when it runs. Raises `RedisError` (with the log tail, nothing left running)
        when it cannot start, e.g. because something else took the port meanwhile.
        """
        self._process.start()

    def flush(self) -> None:
        """Empty every database (FLUSHALL): the server is shared by the whole session."""
        try:
            reply = command(self.port, "FLUSHALL")
        except OSError as error:
            raise RedisError(f"FLUSHALL on {self.host}:{self.port} failed: {error}") from error
        if reply != b"+OK":
            raise RedisError(f"FLUSHALL on {self.host}:{self.port} answered {reply!r}")


def check_installed() -> None:
    """Raise `RedisError` naming the Debian package when /usr/bin/redis-server is missing."""
    if not REDIS_SERVER.is_file():
        raise RedisError(
            f"{REDIS_SERVER} not found; install Debian's `{PACKAGE}` package: run "
            "`bash deploy/bootstrap.sh` as root"
        )


@contextmanager
def run_redis(workdir: Path, *, timeout: float = START_TIMEOUT) -> Iterator[RedisServer]:
    """Start redis-server on a free loopback port, yield it once it answers, then stop it.

    `workdir` receives the log (`redis.log`) and, unless running as root, is the server's
    `--dir`. The server is stopped and a private directory removed even when the start
    fails.
    """
    check_installed()
    run_as = unprivileged_user(RUN_AS_CANDIDATES)
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "redis.log"
    with ExitStack() as cleanup:
        if run_as is None:
            server_dir = workdir
        else:
            server_dir = private_dir("lrs-gateway-redis-", run_as)
            cleanup.callback(shutil.rmtree, server_dir, ignore_errors=True)
        port = free_port(HOST)
        process = _RedisProcess(server_dir, port, log_file, run_as, timeout)
        cleanup.callback(process.stop)
        process.start()
        yield RedisServer(
            host=HOST,
            port=port,
            url=f"redis://{HOST}:{port}/0",
            log_file=log_file,
            workdir=server_dir,
            run_as=None if run_as is None else run_as.name,
            _process=process,
        )


def main(argv: list[str]) -> int:
    """Run a server until interrupted (for poking by hand).

    From tests/: `../.venv/bin/python -m realparts.redis [WORKDIR]`.
    """
    workdir = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="redis-work-"))
    with run_redis(workdir) as server:
        sys.stdout.write(f"Redis at {server.url} (log {server.log_file})\n")
        sys.stdout.write(f"redis-cli -u {server.url} ping\n")
        sys.stdout.flush()
        wait_for_interrupt()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
