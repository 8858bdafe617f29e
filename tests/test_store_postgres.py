"""Credentials in PostgreSQL: replicas (separate `serve` processes) sharing one database.

Against the real PostgreSQL of the `postgres` fixture: a change made through one replica
reaches the other within 2 s, a web admin session works on every replica, the schema is
migrated by hand or at start, and a database that is down is a 503, not a 500 or a
lockout of the credentials already known.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from realparts.postgres import PostgresServer
from support import (
    FakeLRS,
    basic,
    credential,
    eventually,
    free_port,
    gateway_env,
    served_gateway,
    write_config,
)

from gateway.clock import ManualClock
from gateway.forwarding.outboxes import OUTBOX_FILE
from gateway.forwarding.postgres_outbox import PostgresOutbox
from gateway.forwarding.store import OutboxStore, TargetState
from gateway.store.postgres import MIGRATIONS, PostgresCredentials

pytestmark = pytest.mark.postgres

ADMIN = credential("admin", "admin-password", ["all", "admin"])
STATEMENT = {
    "actor": {"mbox": "mailto:learner@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course/replicas"},
}


def replica_config(directory: Path, storage_url: str, dsn: str, port: int, **store: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_config(
        directory,
        storage_url,
        [ADMIN],
        {
            "server": {"port": port, "shutdown_timeout": 5},
            "data_dir": "data",
            "lockout": {"enabled": False},
            "admin_ui": {"secure_cookie": False},
            "store": {"url": dsn, **store},
        },
    )
    return directory / "config.yaml"


def cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), *args],
        cwd=config.parent,
        env=gateway_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_change_through_one_replica_reaches_the_other_within_2_seconds(
    tmp_path: Path, postgres: PostgresServer, aiohttp_server: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    dsn = await asyncio.to_thread(postgres.new_database)
    storage_url = str(storage.make_url("/xAPI/"))
    ports = free_port(), free_port()
    for name, port in zip("ab", ports, strict=True):
        replica_config(tmp_path / name, storage_url, dsn, port)
    admin = basic("admin", "admin-password")
    async with (
        served_gateway(tmp_path / "a", ports[0]) as a,
        served_gateway(tmp_path / "b", ports[1]) as b,
        aiohttp.ClientSession() as session,
    ):

        async def status_at(base: str, auth: dict[str, str]) -> int:
            async with session.post(
                f"{base}/xAPI/statements", json=STATEMENT, headers=auth
            ) as answer:
                return answer.status

        async with session.post(
            f"{a.base}/admin/credentials",
            json={"name": "fleet", "scopes": ["statements/write"]},
            headers=admin,
        ) as answer:
            assert answer.status == 201, await answer.text()
            made = await answer.json()
        auth = basic(made["username"], made["secret"])
        started = time.monotonic()
        await eventually(
            lambda: _is(status_at(b.base, auth), 200), within=2.0, what="the credential on b"
        )
        created_in = time.monotonic() - started

        async with session.patch(
            f"{b.base}/admin/credentials/{made['id']}", json={"enabled": False}, headers=admin
        ) as answer:
            assert answer.status == 200
        started = time.monotonic()
        await eventually(
            lambda: _is(status_at(a.base, auth), 401), within=2.0, what="the disable on a"
        )
        disabled_in = time.monotonic() - started

        # The audit is one, whichever replica answers.
        async with session.get(f"{b.base}/admin/audit", headers=admin) as answer:
            actions = [e["action"] for e in (await answer.json())["entries"]]
        assert actions == ["update", "create"]
    print(f"replica to replica: created in {created_in:.2f} s, disabled in {disabled_in:.2f} s")
    assert postgres.password is not None
    for replica in (a, b):
        assert "Traceback" not in replica.log()
        assert postgres.password not in replica.log()


async def _is(status: Any, expected: int) -> bool:
    return bool(await status == expected)


async def test_a_web_admin_session_works_on_every_replica(
    tmp_path: Path, postgres: PostgresServer, aiohttp_server: Any
) -> None:
    """The session key lives in the database: a load balancer may send a page anywhere."""
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    dsn = await asyncio.to_thread(postgres.new_database)
    ports = free_port(), free_port()
    for name, port in zip("ab", ports, strict=True):
        replica_config(tmp_path / name, str(storage.make_url("/xAPI/")), dsn, port)
    async with (
        served_gateway(tmp_path / "a", ports[0]) as a,
        served_gateway(tmp_path / "b", ports[1]) as b,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{a.base}/admin/login") as form:
            token = form.cookies["lrs_gateway_login"].value
            page = await form.text()
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with session.post(
            f"{a.base}/admin/login",
            data={"csrf": csrf, "username": "admin", "password": "admin-password"},
            headers={"Cookie": f"lrs_gateway_login={token}"},
            allow_redirects=False,
        ) as answer:
            assert answer.status == 303
            cookie = answer.cookies["lrs_gateway_admin"].value
        async with session.get(
            f"{b.base}/admin/ui/credentials",
            headers={"Cookie": f"lrs_gateway_admin={cookie}"},
            allow_redirects=False,
        ) as answer:
            assert answer.status == 200
            assert "Credentials" in await answer.text()


async def test_the_schema_is_migrated_by_hand_when_told_so(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    assert postgres.password is not None
    bare = dsn.replace(f":{postgres.password}@", "@")  # the password from the environment
    config = replica_config(
        tmp_path, "http://127.0.0.1:9/xAPI/", bare, free_port(), migrate="manual"
    )
    env = {"LRS_GATEWAY__STORE__PASSWORD": postgres.password}
    behind = await asyncio.to_thread(cli, config, "store", "status", env=env)
    assert behind.returncode == 1
    assert "run `lrs-gateway store migrate`" in behind.stderr
    served = await asyncio.to_thread(cli, config, "serve", env=env)
    assert served.returncode == 1
    assert "run `lrs-gateway store migrate`" in served.stderr
    migrated = await asyncio.to_thread(cli, config, "store", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    latest = len(MIGRATIONS)
    applied = ", ".join(str(n) for n in range(1, latest + 1))
    assert f"migrated to version {latest} (applied {applied})" in migrated.stdout
    again = await asyncio.to_thread(cli, config, "store", "migrate", env=env)
    assert "nothing to migrate" in again.stdout
    status = await asyncio.to_thread(cli, config, "store", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "postgresql 127.0.0.1:" in status.stdout
    assert f"version {latest} of {latest}" in status.stdout
    assert "outbox         0 statements, 0 deliveries owed, 0 dead letters" in status.stdout
    for run in (behind, served, migrated, again, status):
        assert postgres.password not in run.stdout + run.stderr
        assert "Traceback" not in run.stderr
    made = await asyncio.to_thread(
        cli, config, "credentials", "create", "--name", "LMS", "-s", "statements/write", env=env
    )
    assert made.returncode == 0, made.stderr
    listed = await asyncio.to_thread(cli, config, "credentials", "list", "--json", env=env)
    assert '"name": "LMS"' in listed.stdout


async def test_an_unreachable_database_stops_the_start_with_a_clear_message(
    tmp_path: Path,
) -> None:
    dsn = f"postgresql://lrs:not-this-one@127.0.0.1:{free_port()}/nowhere"
    config = replica_config(tmp_path, "http://127.0.0.1:9/xAPI/", dsn, free_port())
    served = await asyncio.to_thread(cli, config, "serve")
    assert served.returncode == 1
    assert "store.url: cannot reach PostgreSQL at 127.0.0.1:" in served.stderr
    assert "not-this-one" not in served.stderr + served.stdout
    assert "Traceback" not in served.stderr


async def test_a_wrong_password_stops_the_start_without_showing_it(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    assert postgres.password is not None
    dsn = postgres.dsn.replace(f":{postgres.password}@", ":guessed-wrong@")
    config = replica_config(tmp_path, "http://127.0.0.1:9/xAPI/", dsn, free_port())
    served = await asyncio.to_thread(cli, config, "serve")
    assert served.returncode == 1
    assert "refused: password authentication failed" in served.stderr
    assert "guessed-wrong" not in served.stderr + served.stdout
    assert "Traceback" not in served.stderr


async def test_while_the_database_is_down_known_credentials_work_and_changes_are_503(
    tmp_path: Path, postgres: PostgresServer, aiohttp_server: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    dsn = await asyncio.to_thread(postgres.new_database)
    port = free_port()
    replica_config(tmp_path, str(storage.make_url("/xAPI/")), dsn, port)
    admin = basic("admin", "admin-password")
    async with served_gateway(tmp_path, port) as gateway, aiohttp.ClientSession() as session:
        async with session.post(
            f"{gateway.base}/admin/credentials",
            json={"name": "lms", "scopes": ["statements/write"]},
            headers=admin,
        ) as answer:
            made = await answer.json()
        lms = basic(made["username"], made["secret"])
        await asyncio.to_thread(postgres.stop)
        try:
            async with session.post(
                f"{gateway.base}/xAPI/statements", json=STATEMENT, headers=lms
            ) as answer:
                assert answer.status == 200  # the copy in memory still knows it
            async with session.post(
                f"{gateway.base}/admin/credentials",
                json={"name": "another", "scopes": ["statements/write"]},
                headers=admin,
            ) as answer:
                assert answer.status == 503
                assert answer.headers["Retry-After"] == "5"
                assert "credential database cannot be reached" in (await answer.json())["message"]
        finally:
            await asyncio.to_thread(postgres.start)

        async def disabled_again() -> bool:
            async with session.patch(
                f"{gateway.base}/admin/credentials/{made['id']}",
                json={"enabled": False},
                headers=admin,
            ) as answer:
                return answer.status == 200

        await eventually(disabled_again, within=15, what="changes once the database is back")
        await eventually(
            lambda: _is(_post_status(session, gateway.base, lms), 401),
            within=3,
            what="the disable in force",
        )
    assert "Traceback" not in gateway.log()


async def _post_status(session: aiohttp.ClientSession, base: str, auth: dict[str, str]) -> int:
    async with session.post(f"{base}/xAPI/statements", json=STATEMENT, headers=auth) as answer:
        return answer.status


async def test_store_copy_moves_credentials_and_their_audit_from_sqlite(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Created in the SQLite file, copied, then the PostgreSQL store knows them as they were."""
    config = replica_config(tmp_path, "http://127.0.0.1:9/xAPI/", "sqlite:///data/gw.sqlite3", 1)
    made = await asyncio.to_thread(
        cli, config, "credentials", "create", "--name", "LMS", "-s", "statements/write", "--json"
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    disabled = await asyncio.to_thread(
        cli, config, "credentials", "disable", created["username"], "--json"
    )
    assert disabled.returncode == 0, disabled.stderr
    dsn = await asyncio.to_thread(postgres.new_database)
    copied = await asyncio.to_thread(cli, config, "store", "copy", "--to", dsn)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.strip() == "copied 1 credentials and 2 audit entries"
    again = await asyncio.to_thread(cli, config, "store", "copy", "--to", dsn)
    assert again.returncode == 1
    assert "already holds 1 credentials and 2 audit entries" in again.stderr
    assert postgres.password is not None
    assert postgres.password not in again.stdout + again.stderr + copied.stdout

    database = PostgresCredentials(dsn)
    await database.open()
    try:
        (stored,) = await database.all()
        entries, _ = await database.audit(offset=0, limit=10)
    finally:
        await database.close()
    assert (stored.id, stored.username, stored.enabled) == (
        created["id"],
        created["username"],
        False,
    )
    assert stored.secret_hash.reveal().startswith("$2b$")  # the hash itself, as it was
    assert [e.action for e in entries] == ["update", "create"]  # newest first, as before


async def test_store_copy_moves_what_the_sqlite_outboxes_owe_and_they_forget_it(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    config = replica_config(tmp_path, "http://127.0.0.1:9/xAPI/", "sqlite:///data/gw.sqlite3", 1)
    for directory, went_live in (
        (tmp_path / "data", 5000.0),
        (tmp_path / "data" / "worker-1", 4000.0),
    ):
        store = OutboxStore(directory / OUTBOX_FILE, clock=ManualClock(start=went_live))
        try:
            store.went_live(["t"])  # each worker's own moment: the earliest is the target's
            items = [(f"{directory.name}-{n}", b'{"n":%d}' % n, None) for n in range(4)]
            seqs = store.write_pending(items, "1.0.3")
            store.mark_ready(seqs[:-1], [("t", 1000)])  # the last stays pending
            store.ack("t", seqs[:1])  # delivered: not owed, not moved
            store.dead_letter("t", seqs[1:2], "HTTP 400: refused")
            store.set_state("t", TargetState(False, 1000.0, "HTTP 503"))
        finally:
            store.close()
    dsn = await asyncio.to_thread(postgres.new_database)
    copied = await asyncio.to_thread(cli, config, "store", "copy", "--to", dsn)
    assert copied.returncode == 0, copied.stderr
    assert "moved 2 deliveries owed and 2 dead letters from 2 SQLite outbox(es)" in copied.stdout

    outbox = PostgresOutbox(dsn)
    await outbox.open()
    try:
        stats = (await outbox.call(lambda tx: tx.stats(["t"])))["t"]
        pending = await outbox.call(lambda tx: tx.pending(1e12))
        claimed = await outbox.call(lambda tx: tx.claim("t", 10))
        live = await outbox.call(lambda tx: tx.live_start("t"))
    finally:
        await outbox.close()
    assert (stats.backlog, stats.dead_letters, stats.delivered, stats.up) == (2, 2, 2, False)
    # Where live forwarding began travels too (a backfill's boundary), with its first ids.
    assert live.since == 4000.0
    assert {"data-0", "data-1", "data-2", "worker-1-0"} <= live.window_ids
    assert sorted(i for _, i in pending) == ["data-3", "worker-1-3"]  # the resolver's to settle
    assert [c.body for c in claimed] == [b'{"n":2}', b'{"n":2}']  # owed: each file's third
    for directory in (tmp_path / "data", tmp_path / "data" / "worker-1"):
        store = OutboxStore(directory / OUTBOX_FILE)
        try:
            assert store.owed().statements == []  # nothing left here to send twice
        finally:
            store.close()


async def test_store_copy_moves_a_tenants_outbox_with_its_tenant_and_serve_refuses_before(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    storage = "http://127.0.0.1:9/xAPI/"
    write_config(
        tmp_path,
        storage,
        [ADMIN],
        {
            "server": {"port": free_port()},
            "data_dir": "data",
            "store": {"url": dsn},
            "tenants": [{"name": "physics", "storage": {"url": storage}}],
        },
    )
    config = tmp_path / "config.yaml"
    store = OutboxStore(tmp_path / "data" / "tenants" / "physics" / OUTBOX_FILE)
    try:
        seqs = store.write_pending([("p-owed", b"{}", None), ("p-pending", b"{}", None)])
        store.mark_ready(seqs[:1], [("physics-target", 1000)])
    finally:
        store.close()
    # A tenant's SQLite backlog would be stranded: serve says so instead of starting.
    refused = await asyncio.to_thread(cli, config, "serve")
    assert refused.returncode == 1
    assert "tenants/physics" in refused.stderr
    assert "still hold statements to forward" in refused.stderr
    copied = await asyncio.to_thread(cli, config, "store", "copy", "--from", "sqlite:///gw.sqlite3")
    assert copied.returncode == 0, copied.stderr
    assert "moved 1 deliveries owed and 0 dead letters from 1 SQLite outbox(es)" in copied.stdout
    physics, default = PostgresOutbox(dsn, tenant="physics"), PostgresOutbox(dsn)
    await physics.open()
    await default.open()
    try:
        assert [i for _, i in await physics.read(lambda tx: tx.pending(1e12))] == ["p-pending"]
        assert await default.read(lambda tx: tx.pending(1e12)) == []  # never the default's
        claimed = await physics.call(lambda tx: tx.claim("physics-target", 10))
        assert len(claimed) == 1
    finally:
        await physics.close()
        await default.close()
