"""The credential database contract, the same for the SQLite file and PostgreSQL.

Each test runs against both: a fresh SQLite file, and a fresh database on the real
PostgreSQL server of the `postgres` fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet
from realparts.postgres import PostgresServer

from gateway.clock import ManualClock
from gateway.secret import Secret
from gateway.store.credentials import (
    CredentialConflict,
    CredentialDatabase,
    NewCredential,
    OfTenant,
)
from gateway.store.postgres import MIGRATIONS, PostgresCredentials, SchemaBehind
from gateway.store.sqlite import SqliteCredentials

HASH = Secret("$2b$04$" + "a" * 53)
Open = Callable[[], CredentialDatabase]


def new(username: str, name: str = "LMS", **extra: object) -> NewCredential:
    fields: dict[str, object] = {
        "username": username,
        "secret_hash": HASH,
        "name": name,
        "scopes": ("statements/write",),
        "agent": None,
        "enabled": True,
        "expires_at": None,
        "info": None,
        **extra,
    }
    return NewCredential(**fields)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Open, ManualClock]:
    """Opens databases on one store (two opened ones are two processes sharing it)."""
    clock = ManualClock()
    if request.param == "sqlite":
        path = tmp_path / "gateway.sqlite3"

        def make() -> CredentialDatabase:
            return SqliteCredentials(path, clock=clock)

    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        dsn = await asyncio.to_thread(server.new_database)

        def make() -> CredentialDatabase:
            return PostgresCredentials(dsn, clock=clock)

    return make, clock


@pytest.fixture
async def database(opener: tuple[Open, ManualClock]) -> AsyncIterator[CredentialDatabase]:
    made = opener[0]()
    await made.open()
    yield made
    await made.close()


async def test_create_then_read_by_id_username_and_page(
    database: CredentialDatabase, opener: tuple[Open, ManualClock]
) -> None:
    stored = await database.create(new("moodle", "Moodle prod"), actor="basic:admin")
    opener[1].advance(1)
    await database.create(new("canvas", "Canvas"), actor="basic:admin")
    assert await database.get(stored.id) == stored
    assert await database.by_username("moodle") == stored
    assert await database.get("no-such-id") is None
    page, total = await database.page(offset=0, limit=10)
    assert total == 2
    assert [c.username for c in page] == ["moodle", "canvas"]  # oldest first
    found, total = await database.page(offset=0, limit=10, search="MOOD")  # any case
    assert (total, [c.username for c in found]) == (1, ["moodle"])
    found, total = await database.page(offset=0, limit=10, search="%")  # a literal %
    assert (total, found) == (0, [])
    second, total = await database.page(offset=1, limit=1)
    assert (total, [c.username for c in second]) == (2, ["canvas"])
    assert {c.username for c in await database.all()} == {"moodle", "canvas"}


async def test_a_taken_username_is_a_conflict(database: CredentialDatabase) -> None:
    await database.create(new("moodle"), actor="basic:admin")
    with pytest.raises(CredentialConflict):
        await database.create(new("moodle"), actor="basic:admin")


async def test_changes_bump_the_generation_and_are_audited_without_secrets(
    database: CredentialDatabase, opener: tuple[Open, ManualClock]
) -> None:
    clock = opener[1]
    start = await database.generation()
    stored = await database.create(new("moodle"), actor="basic:admin")
    clock.advance(5)
    updated = await database.update(
        stored.id, {"enabled": False, "scopes": ("all/read",)}, actor="oidc:https://idp/alice"
    )
    assert updated is not None
    assert (updated.enabled, updated.scopes, updated.updated_at) == (
        False,
        ("all/read",),
        stored.created_at + 5,
    )
    rotated = await database.rotate(stored.id, Secret("$2b$04$" + "b" * 53), actor="cli:root")
    assert rotated is not None
    assert rotated.secret_hash.reveal().endswith("b" * 53)
    await database.touch({"moodle": clock.now()})  # not a change
    assert (await database.get(stored.id)).last_used_at == clock.now()  # type: ignore[union-attr]
    assert await database.delete(stored.id, actor="basic:admin") is not None
    assert await database.delete(stored.id, actor="basic:admin") is None
    assert await database.update(stored.id, {"enabled": True}, actor="x") is None
    assert await database.generation() == start + 4
    entries, total = await database.audit(offset=0, limit=10)
    assert total == 4
    assert [(e.action, e.actor) for e in entries] == [
        ("delete", "basic:admin"),
        ("rotate", "cli:root"),
        ("update", "oidc:https://idp/alice"),
        ("create", "basic:admin"),
    ]
    assert entries[2].changes == {
        "enabled": {"from": True, "to": False},
        "scopes": {"from": ["statements/write"], "to": ["all/read"]},
    }
    text = repr(entries) + repr([e.public() for e in entries])
    assert "$2b$" not in text


async def test_another_process_sees_a_change_by_its_generation(
    database: CredentialDatabase, opener: tuple[Open, ManualClock]
) -> None:
    other = opener[0]()
    await other.open()  # a second process: opens (and migrates) the same store
    try:
        before = await other.generation()
        stored = await database.create(new("moodle"), actor="basic:admin")
        assert await other.generation() == before + 1
        assert await other.get(stored.id) == stored
    finally:
        await other.close()


async def test_a_shared_key_is_made_once_for_everyone(
    database: CredentialDatabase, opener: tuple[Open, ManualClock]
) -> None:
    other = opener[0]()
    await other.open()
    try:
        first = await database.shared_key("admin-session", Fernet.generate_key)
        assert await other.shared_key("admin-session", Fernet.generate_key) == first
        assert await database.shared_key("another", Fernet.generate_key) != first
        Fernet(first)  # a usable key
    finally:
        await other.close()


# -- PostgreSQL only ---------------------------------------------------------------------


@pytest.mark.postgres
async def test_tenant_filters_list_and_audit_each_tenants_own(
    database: CredentialDatabase,
) -> None:
    await database.create(new("default-one"), actor="basic:admin")
    physics = await database.create(new("physics-one", tenant="physics"), actor="basic:admin")
    await database.update(physics.id, {"name": "renamed"}, actor="basic:physadmin")
    listed, total = await database.page(offset=0, limit=10, tenant=OfTenant("physics"))
    assert ([c.username for c in listed], total) == (["physics-one"], 1)
    listed, total = await database.page(offset=0, limit=10, tenant=OfTenant(None))
    assert ([c.username for c in listed], total) == (["default-one"], 1)
    found, _ = await database.page(offset=0, limit=10, search="one", tenant=OfTenant("physics"))
    assert [c.username for c in found] == ["physics-one"]
    entries, total = await database.audit(offset=0, limit=10, tenant=OfTenant("physics"))
    assert total == 2
    assert {(e.action, e.tenant) for e in entries} == {("create", "physics"), ("update", "physics")}
    _, everything = await database.audit(offset=0, limit=10)
    assert everything == 3


async def test_a_nonce_is_taken_once_everywhere_until_it_expires(
    opener: tuple[Open, ManualClock],
) -> None:
    """Two opened databases are two processes: a nonce one took, the other refuses."""
    make, clock = opener
    first, second = make(), make()
    await first.open()
    await second.open()
    try:
        assert await first.remember_nonce("nonce-abc", clock.now() + 300)
        assert not await second.remember_nonce("nonce-abc", clock.now() + 300)
        assert await second.remember_nonce("nonce-abd", clock.now() + 300)
        clock.advance(301)  # expired: the same key may come again (a new timestamp would)
        assert await second.remember_nonce("nonce-abc", clock.now() + 300)
        assert not await first.remember_nonce("nonce-abc", clock.now() + 300)
    finally:
        await first.close()
        await second.close()


async def test_an_oauth_consumer_keeps_its_sealed_secret(database: CredentialDatabase) -> None:
    sealed = Secret("gAAAA-sealed-by-fernet")
    made = await database.create(
        new("consumer", auth_type="oauth", sealed_secret=sealed, secret_hash=Secret("")),
        actor="basic:admin",
    )
    assert (made.auth_type, made.sealed_secret) == ("oauth", sealed)
    assert "gAAAA" not in repr(made)
    again = await database.by_username("consumer")
    assert again is not None
    assert (again.auth_type, again.sealed_secret) == ("oauth", sealed)
    rotated = await database.rotate(
        made.id, Secret(""), actor="basic:admin", sealed_secret=Secret("gAAAA-another")
    )
    assert rotated is not None
    assert rotated.sealed_secret == Secret("gAAAA-another")
    assert (await database.by_username("consumer")).public()["auth_type"] == "oauth"  # type: ignore[union-attr]


async def test_replicas_starting_together_migrate_once(postgres: PostgresServer) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    replicas = [PostgresCredentials(dsn) for _ in range(4)]
    await asyncio.gather(*(r.open() for r in replicas))
    try:
        connection = await asyncpg.connect(dsn)
        try:
            versions = await connection.fetch("SELECT version FROM lrs_gateway_migrations")
        finally:
            await connection.close()
        assert sorted(v["version"] for v in versions) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await asyncio.gather(*(r.close() for r in replicas))


@pytest.mark.postgres
async def test_manual_migration_refuses_an_old_schema_then_opens_a_migrated_one(
    postgres: PostgresServer,
) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    with pytest.raises(SchemaBehind, match="lrs-gateway store migrate"):
        await PostgresCredentials(dsn, auto_migrate=False).open()
    migrated = PostgresCredentials(dsn)
    await migrated.open()
    await migrated.close()
    manual = PostgresCredentials(dsn, auto_migrate=False)
    await manual.open()
    await manual.close()


@pytest.mark.postgres
async def test_the_password_stays_out_of_reprs(postgres: PostgresServer) -> None:
    dsn = await asyncio.to_thread(postgres.new_database)
    database = PostgresCredentials(dsn)
    assert postgres.password is not None
    assert postgres.password not in repr(database)
    # Without the password in the URL, the separate setting gives it.
    bare = dsn.replace(f":{postgres.password}@", "@")
    separate = PostgresCredentials(bare, password=Secret(postgres.password))
    await separate.open()
    assert await separate.generation() == 0
    await separate.close()
