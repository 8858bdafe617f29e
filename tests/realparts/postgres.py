"""Run a real PostgreSQL server (Debian's `postgresql`, 15 or later) for the test suite.

`run_postgres()` makes a throwaway cluster with `initdb`, starts `postgres` on a free
loopback port as a child process, creates the database `lrs_gateway_test` and yields a
`PostgresServer`; at exit it stops the server (whatever happened before) and nothing of it
is left running. The binaries are those of the highest version in
`/usr/lib/postgresql/<version>/bin` (Debian's layout; `deploy/bootstrap.sh` installs the
package when missing), never whatever `pg_ctl` happens to be on PATH.

The cluster is tuned for tests, not for keeping data: `fsync`, `synchronous_commit` and
`full_page_writes` are off (a crash of the machine may lose it, a stop/start does not). It
listens on 127.0.0.1 only, with its Unix socket in its own directory (never
/var/run/postgresql, which belongs to the system's clusters). TCP connections need the
superuser's password (SCRAM, generated per run and part of `dsn`), so other users of the
machine cannot use the server; the socket directory is private (0700) and trusted.

PostgreSQL refuses to run as root. When the tests run as root, `initdb` and `postgres` run
as the `postgres` system user the Debian package creates (else `nobody`), through
`subprocess.Popen(user=, group=, extra_groups=[])`: no `runuser`/`su` in between, so the
child's pid is the postmaster's own, and signals reach it unchanged. That user cannot enter
pytest's temporary directories (/tmp/pytest-of-root is 0700), so the cluster then lives in
a private directory of its own under the system temporary directory (0700, owned by that
user), removed at exit; only the log stays in `workdir`. Not running as root, everything
(cluster included) lives in `workdir` and runs as the current user.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote

from .process import free_port, log_tail, wait_for_interrupt

__all__ = [
    "DATABASE",
    "MIN_VERSION",
    "PostgresError",
    "PostgresServer",
    "RunAs",
    "find_postgres",
    "private_dir",
    "run_postgres",
    "unprivileged_user",
]

PACKAGE = "postgresql"
POSTGRES_ROOT = Path("/usr/lib/postgresql")
MIN_VERSION = 15
"""The oldest major version the gateway supports (Debian 12's)."""
HOST = "127.0.0.1"
SUPERUSER = "lrs_gateway"
DATABASE = "lrs_gateway_test"
RUN_AS_CANDIDATES = ("postgres", "nobody")
"""Users the server runs as when the tests run as root, first existing one wins."""

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
"""Seconds a fast shutdown may take before an immediate one, then SIGKILL."""
COMMAND_TIMEOUT = 30.0
"""Seconds `initdb` or one `psql` command may take."""
POLL_INTERVAL = 0.1

DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""What `new_database` accepts: an unquoted identifier, so a DSN never needs escaping."""


class PostgresError(RuntimeError):
    """PostgreSQL could not be found, initialised, started or told something."""


@dataclass(frozen=True)
class RunAs:
    """An unprivileged user a server child runs as, because the tests run as root."""

    name: str
    uid: int
    gid: int


def unprivileged_user(candidates: Sequence[str]) -> RunAs | None:
    """Return the first existing user of `candidates` when running as root, else None.

    None means "run as the current user", which is already unprivileged.
    """
    if os.geteuid() != 0:
        return None
    for name in candidates:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise RuntimeError(  # not PostgresError: the Redis part uses this too
        f"running as root, and none of the users {', '.join(candidates)} exists to run the "
        "server as (servers refuse to, or should not, run as root)"
    )


def private_dir(prefix: str, run_as: RunAs) -> Path:
    """Make a 0700 directory owned by `run_as` under the system temporary directory.

    Needed when running as root: `run_as` cannot enter pytest's own temporary directories.
    The caller removes it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(path, run_as.uid, run_as.gid)
    return path


def find_postgres(root: Path = POSTGRES_ROOT) -> tuple[Path, int]:
    """Return the `bin` directory of the highest installed major version, and that version.

    Raises `PostgresError` naming the Debian package when there is none, or it is older
    than `MIN_VERSION`.
    """
    versions = sorted(
        int(entry.name)
        for entry in (root.iterdir() if root.is_dir() else ())
        if entry.name.isdigit() and (entry / "bin" / "postgres").is_file()
    )
    advice = (
        f"install Debian's `{PACKAGE}` package (PostgreSQL >= {MIN_VERSION}): "
        "run `bash deploy/bootstrap.sh` as root"
    )
    if not versions:
        raise PostgresError(f"no PostgreSQL server found in {root}/<version>/bin; {advice}")
    version = versions[-1]
    if version < MIN_VERSION:
        raise PostgresError(f"PostgreSQL {version} in {root} is too old; {advice}")
    bin_dir = root / str(version) / "bin"
    tools = ("initdb", "postgres", "pg_isready", "psql")
    missing = [name for name in tools if not (bin_dir / name).is_file()]
    if missing:
        raise PostgresError(f"{bin_dir} lacks {', '.join(missing)}; {advice}")
    return bin_dir, version


def _dsn(user: str, password: str | None, port: int, database: str) -> str:
    credentials = quote(user, safe="")
    if password is not None:
        credentials += ":" + quote(password, safe="")
    return f"postgresql://{credentials}@{HOST}:{port}/{database}"


class _Postmaster:
    """The one mutable part of a `PostgresServer`: its current postmaster process."""

    def __init__(
        self,
        bin_dir: Path,
        data_dir: Path,
        cwd: Path,
        port: int,
        log_file: Path,
        run_as: RunAs | None,
        timeout: float,
    ) -> None:
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.cwd = cwd
        self.port = port
        self.log_file = log_file
        self.run_as = run_as
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a child writing to the log, as `run_as` when set."""
        log: IO[bytes]
        with self.log_file.open("ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                user=None if self.run_as is None else self.run_as.uid,
                group=None if self.run_as is None else self.run_as.gid,
                extra_groups=None if self.run_as is None else [],
            )

    def start(self) -> None:
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                return
            process = self.spawn([str(self.bin_dir / "postgres"), "-D", str(self.data_dir)])
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
        """Fast shutdown (SIGINT: clients are disconnected, unlike SIGTERM's smart one).

        An immediate shutdown (SIGQUIT) follows when it takes longer than `STOP_TIMEOUT`,
        then SIGKILL.
        """
        process, self.process = self.process, None
        if process is None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT):
            if process.poll() is not None:
                return
            process.send_signal(sig)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
            return
        process.kill()
        process.wait()

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Poll `pg_isready` until the server accepts connections, or fail with the log."""
        argv = [str(self.bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port)]
        argv += ["-U", SUPERUSER, "-d", "postgres", "-t", "2"]
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PostgresError(
                    f"postgres exited with status {process.returncode} before accepting "
                    f"connections on {HOST}:{self.port}; log {self.log_file}:\n"
                    f"{log_tail(self.log_file)}"
                )
            ready = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
            if ready.returncode == 0:
                return
            time.sleep(POLL_INTERVAL)
        raise PostgresError(
            f"postgres did not accept connections on {HOST}:{self.port} within "
            f"{self.timeout:.0f} s; log {self.log_file}:\n{log_tail(self.log_file)}"
        )


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway PostgreSQL cluster, its superuser and its test database."""

    host: str
    """Always 127.0.0.1: the server listens there only."""
    port: int
    """Kept across `stop()`/`start()`."""
    user: str
    """A superuser (it may create databases and roles)."""
    password: str | None
    """Generated per run; TCP connections need it."""
    database: str
    """`lrs_gateway_test`, created at start, shared by the session: see `new_database`."""
    dsn: str
    """`postgresql://user:password@127.0.0.1:PORT/lrs_gateway_test` (asyncpg, libpq, ...)."""
    log_file: Path
    data_dir: Path
    socket_dir: Path
    """Where its Unix socket is (`host=` this directory in libpq terms); trusted, 0700."""
    bin_dir: Path
    version: int
    """The major version, e.g. 15."""
    run_as: str | None
    """The system user it runs as because the tests run as root; None: the current user."""
    _postmaster: _Postmaster = field(repr=False, compare=False)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        process = self._postmaster.process
        return process.pid if process is not None and process.poll() is None else None

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut); a no-op when stopped.

        The cluster stays: `start()` brings back the same data on the same port, so a test
        can see what the gateway does while its database is down.
        """
        self._postmaster.stop()

    def start(self) -> None:
        """Start the same cluster again on the same port; return once it accepts connections.

        A no-op when it runs. Raises `PostgresError` (with the log tail, nothing left
        running) when it cannot start, e.g. because something else took the port meanwhile.
        """
        self._postmaster.start()

    def dsn_for(self, database: str) -> str:
        """The DSN of another database of this server (same user, password, port)."""
        return _dsn(self.user, self.password, self.port, database)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` with this server's own `psql` (over TCP, as the superuser); its output.

        A synchronous helper for setting things up; tests talk to the server with asyncpg.
        """
        argv = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database]
        env = dict(os.environ, PGPASSWORD=self.password or "", PGCONNECT_TIMEOUT="5")
        try:
            result = subprocess.run(
                [*argv, "-c", sql],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise PostgresError(f"psql timed out running {sql!r}") from error
        if result.returncode != 0:
            raise PostgresError(
                f"psql failed (status {result.returncode}) running {sql!r}: "
                + result.stderr.decode(errors="replace").strip()
            )
        return result.stdout.decode(errors="replace")

    def new_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database and return its DSN.

        One per test keeps tests from seeing each other's rows (and tables). `name` must
        be a lowercase unquoted identifier (`ValueError` otherwise); None picks a unique
        `test_<hex>`. An existing name raises `PostgresError`.
        """
        if name is None:
            name = f"test_{secrets.token_hex(8)}"
        if not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r} is not a lowercase identifier")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)


def _initdb(
    bin_dir: Path,
    base: Path,
    data_dir: Path,
    log_file: Path,
    password: str,
    run_as: RunAs | None,
) -> None:
    """`initdb` the cluster as `run_as`: superuser `SUPERUSER`, SCRAM over TCP, UTF8, C."""
    password_file = base / "superuser.password"
    password_file.touch(mode=0o600)
    password_file.write_text(password + "\n", encoding="utf-8")
    if run_as is not None:
        os.chown(password_file, run_as.uid, run_as.gid)
    argv = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER]
    argv += [f"--pwfile={password_file}", "--auth-host=scram-sha-256", "--auth-local=trust"]
    argv += ["-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"]
    log: IO[bytes]
    try:
        with log_file.open("ab") as log:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=base,
                user=None if run_as is None else run_as.uid,
                group=None if run_as is None else run_as.gid,
                extra_groups=None if run_as is None else [],
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
    except subprocess.TimeoutExpired as error:
        raise PostgresError(f"initdb timed out; log {log_file}:\n{log_tail(log_file)}") from error
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresError(
            f"initdb failed with status {result.returncode}; log {log_file}:\n{log_tail(log_file)}"
        )


def _configure(data_dir: Path, socket_dir: Path, port: int) -> None:
    """Write the test settings; the port is in the file, so a restart keeps it.

    The files keep their owner (they exist and are rewritten in place).
    """
    settings = {
        "listen_addresses": f"'{HOST}'",
        "port": str(port),
        "unix_socket_directories": f"'{socket_dir}'",
        "unix_socket_permissions": "0700",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "32MB",
        "max_connections": "100",
    }
    with (data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# tests/realparts/postgres.py: a throwaway cluster for tests\n")
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    (data_dir / "pg_hba.conf").write_text(
        "# tests/realparts/postgres.py: the socket directory is private; TCP needs the password\n"
        "local all all trust\n"
        f"host all all {HOST}/32 scram-sha-256\n",
        encoding="utf-8",
    )


@contextmanager
def run_postgres(workdir: Path, *, timeout: float = START_TIMEOUT) -> Iterator[PostgresServer]:
    """Make a cluster, start it on a free loopback port, yield it, then stop it.

    `workdir` receives the log (`postgres.log`, initdb's output included) and, unless
    running as root, the cluster (`cluster/data`, socket in `cluster/sock`). The server is
    stopped and a private cluster directory removed even when the start fails.
    """
    bin_dir, version = find_postgres()
    run_as = unprivileged_user(RUN_AS_CANDIDATES)
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "postgres.log"
    with ExitStack() as cleanup:
        if run_as is None:
            base = workdir / "cluster"
            base.mkdir(mode=0o700)
        else:
            base = private_dir("lrs-gateway-postgres-", run_as)
            cleanup.callback(shutil.rmtree, base, ignore_errors=True)
        data_dir = base / "data"
        socket_dir = base / "sock"
        socket_dir.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(socket_dir, run_as.uid, run_as.gid)

        password = secrets.token_urlsafe(24)
        _initdb(bin_dir, base, data_dir, log_file, password, run_as)
        port = free_port(HOST)
        _configure(data_dir, socket_dir, port)

        postmaster = _Postmaster(bin_dir, data_dir, base, port, log_file, run_as, timeout)
        cleanup.callback(postmaster.stop)
        postmaster.start()
        server = PostgresServer(
            host=HOST,
            port=port,
            user=SUPERUSER,
            password=password,
            database=DATABASE,
            dsn=_dsn(SUPERUSER, password, port, DATABASE),
            log_file=log_file,
            data_dir=data_dir,
            socket_dir=socket_dir,
            bin_dir=bin_dir,
            version=version,
            run_as=None if run_as is None else run_as.name,
            _postmaster=postmaster,
        )
        server.new_database(DATABASE)
        yield server


def main(argv: list[str]) -> int:
    """Run a cluster until interrupted (for poking by hand).

    From tests/: `../.venv/bin/python -m realparts.postgres [WORKDIR]` (WORKDIR must not
    hold a cluster yet). The DSN, password included, is printed: the cluster is throwaway.
    """
    workdir = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="postgres-work-"))
    with run_postgres(workdir) as server:
        sys.stdout.write(
            f"PostgreSQL {server.version} at {server.host}:{server.port} "
            f"(data {server.data_dir}, log {server.log_file})\n"
            f"psql '{server.dsn}'\n"
        )
        sys.stdout.flush()
        wait_for_interrupt()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
