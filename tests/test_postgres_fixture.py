"""Tests of the `postgres` fixture: a real PostgreSQL, talked to with asyncpg (no gateway)."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
from realparts.postgres import (
    DATABASE,
    MIN_VERSION,
    PostgresError,
    PostgresServer,
    find_postgres,
    run_postgres,
)

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def _connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        yield connection
    finally:
        connection.terminate()  # never waits on a server that is gone


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uids of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


def _alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (the postmaster's checkpointer, backends, ...)."""
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat_file.parent.name))
    return children


def _expected_user() -> str:
    """Who the server must run as: `postgres` when the tests are root, else ourselves."""
    if os.geteuid() == 0:
        return "postgres"
    return pwd.getpwuid(os.geteuid()).pw_name


async def test_dsn_connects_writes_and_reads(postgres: PostgresServer) -> None:
    assert postgres.host == "127.0.0.1"
    assert postgres.database == DATABASE == "lrs_gateway_test"
    assert postgres.password
    assert postgres.dsn == (
        f"postgresql://{postgres.user}:{postgres.password}@127.0.0.1:{postgres.port}/"
        "lrs_gateway_test"
    )
    async with _connect(postgres.dsn) as connection:
        assert connection.get_server_version().major >= MIN_VERSION
        assert await connection.fetchval("SELECT current_database()") == DATABASE
        await connection.execute(
            "CREATE TABLE fixture_smoke (id serial PRIMARY KEY, body jsonb NOT NULL)"
        )
        try:
            await connection.execute(
                "INSERT INTO fixture_smoke (body) VALUES ($1::jsonb)", '{"verb": "answered"}'
            )
            assert await connection.fetchval("SELECT body->>'verb' FROM fixture_smoke") == (
                "answered"
            )
        finally:
            await connection.execute("DROP TABLE fixture_smoke")


async def test_listens_on_loopback_with_its_own_socket_dir(postgres: PostgresServer) -> None:
    async with _connect(postgres.dsn) as connection:
        assert await connection.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await connection.fetchval("SHOW port") == str(postgres.port)
        assert await connection.fetchval("SHOW unix_socket_directories") == str(postgres.socket_dir)
        assert await connection.fetchval("SHOW fsync") == "off"
    assert not str(postgres.socket_dir).startswith(("/var/run", "/run"))
    assert (postgres.socket_dir / f".s.PGSQL.{postgres.port}").is_socket()


async def test_tcp_needs_the_password(postgres: PostgresServer) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=postgres.host,
            port=postgres.port,
            user=postgres.user,
            password="not-the-password",
            database=postgres.database,
            timeout=10,
        )


async def test_new_database_is_empty_and_isolated(postgres: PostgresServer) -> None:
    dsn_a = postgres.new_database()
    dsn_b = postgres.new_database("fixture_isolation_b")
    assert dsn_b == postgres.dsn_for("fixture_isolation_b")
    assert dsn_b.endswith(f"@127.0.0.1:{postgres.port}/fixture_isolation_b")
    assert dsn_a != dsn_b

    async with _connect(dsn_a) as a, _connect(dsn_b) as b:
        await a.execute("CREATE TABLE statements (id text PRIMARY KEY)")
        await a.execute("INSERT INTO statements VALUES ('only-in-a')")
        assert await a.fetchval("SELECT count(*) FROM statements") == 1
        assert await b.fetchval("SELECT to_regclass('statements')") is None
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert await b.fetchval(tables) == 0

    with pytest.raises(PostgresError, match="already exists"):
        postgres.new_database("fixture_isolation_b")
    with pytest.raises(ValueError, match="identifier"):
        postgres.new_database('bad"; DROP DATABASE postgres; --')


async def test_server_does_not_run_as_root(postgres: PostgresServer) -> None:
    pid = postgres.pid
    assert pid is not None
    uid = pwd.getpwnam(_expected_user()).pw_uid
    assert _uids(pid) == [uid] * 4
    async with _connect(postgres.dsn) as connection:
        backend = await connection.fetchval("SELECT pg_backend_pid()")
        assert _uids(backend) == [uid] * 4
    assert postgres.data_dir.stat().st_uid == uid
    if os.geteuid() == 0:
        assert postgres.run_as == "postgres"
        assert all(uid != 0 for uid in _uids(pid))
    else:
        assert postgres.run_as is None


async def test_stop_refuses_connections_and_start_brings_the_data_back(tmp_path: Path) -> None:
    with run_postgres(tmp_path / "pg") as server:
        first_pid = server.pid
        assert first_pid is not None
        port = server.port
        async with _connect(server.dsn) as connection:
            await connection.execute("CREATE TABLE kept (note text)")
            await connection.execute("INSERT INTO kept VALUES ('survives a restart')")

            server.stop()
            assert server.pid is None
            assert not _alive(first_pid)
            # The open connection was cut (fast shutdown), and nothing answers any more.
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await connection.fetchval("SELECT 1")
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(server.dsn, timeout=5)
        server.stop()  # a no-op when stopped

        server.start()
        second_pid = server.pid
        assert second_pid is not None
        assert second_pid != first_pid
        assert server.port == port
        async with _connect(server.dsn) as connection:
            assert await connection.fetchval("SELECT note FROM kept") == "survives a restart"
        server.start()  # a no-op when running
        assert server.pid == second_pid

        children = _children(second_pid)
        assert children  # checkpointer, walwriter, ...
        data_dir = server.data_dir

    assert server.pid is None
    assert not _alive(second_pid)
    assert not any(_alive(child) for child in children)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    if os.geteuid() == 0:
        assert not data_dir.exists()  # the private cluster directory is removed
    assert "database system is shut down" in server.log_file.read_text()


async def test_a_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    with run_postgres(tmp_path / "pg") as server:
        server.stop()
        with socket.create_server(("127.0.0.1", server.port)):
            with pytest.raises(PostgresError, match="already in use"):
                server.start()
            assert server.pid is None
        server.start()  # the port is free again: the same cluster comes back
        async with _connect(server.dsn) as connection:
            assert await connection.fetchval("SELECT current_database()") == DATABASE


def test_find_postgres_names_the_package_when_missing_or_too_old(tmp_path: Path) -> None:
    with pytest.raises(PostgresError, match="Debian's `postgresql` package"):
        find_postgres(tmp_path)
    (tmp_path / "14" / "bin").mkdir(parents=True)
    (tmp_path / "14" / "bin" / "postgres").touch()
    with pytest.raises(PostgresError, match=r"PostgreSQL 14 .* too old.*`postgresql`"):
        find_postgres(tmp_path)
    newest = tmp_path / "16" / "bin"
    newest.mkdir(parents=True)
    for tool in ("initdb", "postgres", "pg_isready", "psql"):
        (newest / tool).touch()
    assert find_postgres(tmp_path) == (newest, 16)
