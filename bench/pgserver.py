"""A throwaway PostgreSQL cluster for the bench, with durability on (fsync as in production).

Like tests/realparts/postgres.py (Debian's binaries, the highest version in
/usr/lib/postgresql/<version>/bin; as root, `initdb` and `postgres` run as the `postgres`
system user, else `nobody`; loopback only, SCRAM with a password made per run), but tuned
for measuring, not for tests: `fsync`, `synchronous_commit` and `full_page_writes` stay on,
so each commit waits for its WAL to be on disk, as the SQLite outbox's synchronous=FULL
waits for its fsync. The cluster lives in the bench's temporary directory (same filesystem
as the SQLite outboxes' data_dir) and is started through `Bench.start`, pinned like the
bench's Redis (CPU 0, with the load generator and the stubs), so the bench stops it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import Bench, Server, free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")
MIN_VERSION = 15  # the oldest the gateway supports (Debian 12's)
HOST = "127.0.0.1"
SUPERUSER = "bench"
RUN_AS = ("postgres", "nobody")
# What the bench's cluster runs with (besides where it listens): durability as shipped.
SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "max_connections": "100",
}


def find_postgres(root: Path = POSTGRES_ROOT) -> Path | None:
    """The `bin` directory of the highest installed version >= MIN_VERSION, or None."""
    tools = ("initdb", "postgres", "pg_isready", "psql")
    versions = sorted(
        int(entry.name)
        for entry in (root.iterdir() if root.is_dir() else ())
        if entry.name.isdigit() and all((entry / "bin" / tool).is_file() for tool in tools)
    )
    if not versions or versions[-1] < MIN_VERSION:
        return None
    return root / str(versions[-1]) / "bin"


def has_asyncpg() -> bool:
    """Whether the gateway's Python (this one: the bench runs on the project's venv) has it."""
    done = subprocess.run([sys.executable, "-c", "import asyncpg"], capture_output=True)
    return done.returncode == 0


def postgres_missing() -> str | None:
    """Why the PostgreSQL setups cannot run here (None: they can)."""
    if find_postgres() is None:
        return f"no PostgreSQL >= {MIN_VERSION} in {POSTGRES_ROOT}/<version>/bin"
    if not has_asyncpg():
        return "asyncpg is not installed in the bench's Python"
    return None


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root (it refuses root), else None."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    sys.exit(f"bench: running as root and none of the users {', '.join(RUN_AS)} exists")


@dataclass
class Postgres:
    """The bench's running cluster: its server, where it is, the superuser's password."""

    server: Server
    bin_dir: Path
    port: int
    password: str
    version: str

    def dsn(self, database: str) -> str:
        """The DSN of one of its databases (the password in it: the cluster is throwaway)."""
        return f"postgresql://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    def psql(self, sql: str) -> str:
        """Run `sql` with the cluster's psql, over TCP as the superuser; its output."""
        done = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-h", HOST, "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"),
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            sys.exit(f"bench: psql failed running {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """A fresh database (a lowercase identifier); its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def commits(self, name: str) -> int:
        """Transactions committed in a database so far (pg_stat_database, ~1 s behind)."""
        return int(self.psql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'"))

    def database_bytes(self, name: str) -> int:
        """The size of a database on disk (tables, indexes, TOAST), in bytes."""
        return int(self.psql(f"SELECT pg_database_size('{name}')"))


def _initdb(
    bin_dir: Path, base: Path, data: Path, password: str, run_as: tuple[int, int] | None
) -> None:
    """initdb the cluster (as `run_as`): superuser `bench`, SCRAM over TCP, UTF8, C locale."""
    pwfile = base / "superuser.password"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if run_as is not None:
        os.chown(pwfile, *run_as)
    try:
        done = subprocess.run(
            [
                str(bin_dir / "initdb"),
                *("-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}"),
                *("--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"),
                "--no-locale",
                "--no-instructions",
            ],
            cwd=base,
            user=None if run_as is None else run_as[0],
            group=None if run_as is None else run_as[1],
            extra_groups=None if run_as is None else [],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        sys.exit(f"bench: initdb failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _wait_accepting(bin_dir: Path, port: int, server: Server, timeout: float = 30) -> None:
    """Poll pg_isready: listening is not yet accepting logins (startup, recovery)."""
    deadline = time.monotonic() + timeout
    while True:
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(port), "-t", "2"],
            capture_output=True,
            check=False,
        )
        if ready.returncode == 0:
            return
        if server.process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench: postgres did not start:\n{server.log.read_text()[-3000:]}")
        time.sleep(0.1)


def start_postgres(bench: Bench, name: str = "postgres") -> Postgres:
    """initdb a cluster under the bench's temporary directory and start it on CPU 0."""
    bin_dir = find_postgres()
    if bin_dir is None:
        sys.exit("bench: no PostgreSQL server binaries")
    run_as = _run_as()
    # The server's user must reach its directory through the bench's (0700, root's).
    bench.tmp.chmod(0o711)
    base = bench.tmp / name
    base.mkdir(mode=0o700)
    data, sock = base / "data", base / "sock"
    sock.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(base, *run_as)
        os.chown(sock, *run_as)
    password = secrets.token_urlsafe(24)
    _initdb(bin_dir, base, data, password, run_as)
    port = free_port()
    listen = {
        "listen_addresses": f"'{HOST}'",
        "port": str(port),
        "unix_socket_directories": f"'{sock}'",
        "unix_socket_permissions": "0700",
    }
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# bench/pgserver.py: a throwaway cluster, durable as shipped\n")
        conf.writelines(f"{key} = {value}\n" for key, value in {**listen, **SETTINGS}.items())
    (data / "pg_hba.conf").write_text(
        f"local all all trust\nhost all all {HOST}/32 scram-sha-256\n"
    )
    if run_as is not None:
        os.chown(data / "pg_hba.conf", *run_as)
    # On CPU 0, like the bench's Redis: the gateway under test keeps CPU 1 alone.
    server = bench.start(
        name,
        [str(bin_dir / "postgres"), "-D", str(data)],
        0,
        f"postgresql://{HOST}:{port}/",
        f"tcp://{HOST}:{port}",
        run_as=run_as,
        cwd=base,
    )
    _wait_accepting(bin_dir, port, server)
    version = (bin_dir / "postgres").parent.parent.name
    return Postgres(server, bin_dir, port, password, version)
