"""Credentials in the database, managed through /admin/credentials, used by Basic auth."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from realparts.oidc import OidcProvider
from support import (
    FakeLRS,
    basic,
    credential,
    eventually,
    free_port,
    served_gateway,
    write_config,
)

from gateway.clock import ManualClock
from gateway.config.settings import Config
from gateway.http.app import create_app
from gateway.http.keys import CREDENTIAL_SOURCES
from gateway.secret import Secret
from gateway.store.credentials import NewCredential
from gateway.store.sqlite import CREDENTIALS_FILE, SqliteCredentials

Client = TestClient[web.Request, web.Application]
USERS = [
    credential("admin", "admin-password", ["all", "admin"]),
    credential("lms", "lms-password", ["statements/write"]),
]
ADMIN = basic("admin", "admin-password")
STATEMENT = {
    "actor": {"mbox": "mailto:learner@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course/1"},
}


@pytest.fixture
async def config(tmp_path: Path, aiohttp_server: Any) -> Config:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    return write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        {"store": {"poll_interval": 0.05}},
    )


@pytest.fixture
async def client(config: Config, aiohttp_client: Any) -> Client:
    made: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return made


async def create(client: Client, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    answer = await client.post("/admin/credentials", json=body, headers=ADMIN)
    assert answer.status == status, await answer.text()
    created: dict[str, Any] = await answer.json()
    return created


async def post_statement(client: Client, username: str, secret: str) -> int:
    answer = await client.post("/xAPI/statements", json=STATEMENT, headers=basic(username, secret))
    return answer.status


async def test_a_created_credential_posts_statements_and_its_secret_is_shown_once(
    client: Client,
) -> None:
    created = await create(client, {"name": "LMS two", "scopes": ["statements/write"]})
    assert created["username"].startswith("gw-")
    assert len(created["secret"]) >= 40  # generated: 256 random bits
    assert await post_statement(client, created["username"], created["secret"]) == 200
    shown = await (await client.get(f"/admin/credentials/{created['id']}", headers=ADMIN)).json()
    assert "secret" not in shown
    assert "secret_hash" not in shown
    listing = await (await client.get("/admin/credentials", headers=ADMIN)).text()
    assert created["secret"] not in listing
    assert "$2b$" not in listing


async def test_a_chosen_username_and_secret_are_not_echoed(client: Client) -> None:
    created = await create(
        client,
        {"name": "n", "scopes": ["all/read"], "username": "reporting", "secret": "s" * 20},
    )
    assert created["username"] == "reporting"
    assert "secret" not in created
    answer = await client.get("/xAPI/statements", headers=basic("reporting", "s" * 20))
    assert answer.status == 200


@pytest.mark.parametrize(
    ("body", "status", "said"),
    [
        ({"name": "n", "scopes": ["all"], "colour": "red"}, 400, "unknown field 'colour'"),
        ({"name": "n", "scopes": ["all", "everything"]}, 400, "scopes: unknown 'everything'"),
        ({"name": "n", "scopes": []}, 400, "scopes: at least one"),
        ({"scopes": ["all"]}, 400, "name: required"),
        ({"name": "n", "scopes": ["all"], "secret": "short"}, 400, "secret: must be 12 to 72"),
        ({"name": "n", "scopes": ["all"], "secret": "é" * 40}, 400, "not 80"),
        ({"name": "n", "scopes": ["all"], "agent": {"mbox": "bob"}}, 400, "agent"),
        ({"name": "n", "scopes": ["all"], "username": "a:b"}, 400, "username:"),
        ({"name": "n", "scopes": ["all"], "username": "lms"}, 409, "credentials file"),
        ({"name": "n", "scopes": ["all"], "expires_at": "tomorrow"}, 400, "expires_at"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(
    client: Client, body: dict[str, Any], status: int, said: str
) -> None:
    answer = await client.post("/admin/credentials", json=body, headers=ADMIN)
    assert answer.status == status
    error = await answer.json()
    assert said in error["message"]
    assert "Traceback" not in json.dumps(error)


async def test_a_duplicate_username_is_409(client: Client) -> None:
    await create(client, {"name": "a", "scopes": ["all"], "username": "twice"})
    await create(client, {"name": "b", "scopes": ["all"], "username": "twice"}, status=409)


async def test_only_admins_manage_credentials(client: Client) -> None:
    lms = basic("lms", "lms-password")
    for method, path in (
        ("GET", "/admin/credentials"),
        ("POST", "/admin/credentials"),
        ("GET", "/admin/credentials/x"),
        ("PATCH", "/admin/credentials/x"),
        ("POST", "/admin/credentials/x/rotate"),
        ("DELETE", "/admin/credentials/x"),
        ("GET", "/admin/audit"),
    ):
        answer = await client.request(method, path, json={}, headers=lms)
        assert answer.status == 403, (method, path)
        assert (await client.request(method, path)).status == 401


async def test_disable_enable_rotate_delete_take_effect_at_once(client: Client) -> None:
    created = await create(client, {"name": "LMS", "scopes": ["statements/write"]})
    path = f"/admin/credentials/{created['id']}"
    username, secret = created["username"], created["secret"]
    assert await post_statement(client, username, secret) == 200  # now cached as verified

    patched = await client.patch(path, json={"enabled": False}, headers=ADMIN)
    assert (await patched.json())["enabled"] is False
    assert await post_statement(client, username, secret) == 401
    await client.patch(path, json={"enabled": True}, headers=ADMIN)
    assert await post_statement(client, username, secret) == 200

    rotated = await (await client.post(f"{path}/rotate", headers=ADMIN)).json()
    assert rotated["secret"] != secret
    assert await post_statement(client, username, secret) == 401
    assert await post_statement(client, username, rotated["secret"]) == 200

    assert (await client.delete(path, headers=ADMIN)).status == 204
    assert await post_statement(client, username, rotated["secret"]) == 401
    assert (await client.get(path, headers=ADMIN)).status == 404
    assert (await client.delete(path, headers=ADMIN)).status == 404


async def test_scopes_changed_by_patch_apply(client: Client) -> None:
    created = await create(client, {"name": "LMS", "scopes": ["statements/write"]})
    auth = basic(created["username"], created["secret"])
    assert (await client.get("/xAPI/statements", headers=auth)).status == 403
    await client.patch(
        f"/admin/credentials/{created['id']}", json={"scopes": ["all/read"]}, headers=ADMIN
    )
    assert (await client.get("/xAPI/statements", headers=auth)).status == 200


async def test_an_expired_credential_is_refused_without_any_change(
    config: Config, aiohttp_client: Any
) -> None:
    clock = ManualClock()
    client: Client = await aiohttp_client(
        create_app(config, registry=CollectorRegistry(), clock=clock)
    )
    expires = clock.now() + 60
    created = await create(client, {"name": "x", "scopes": ["all"], "expires_at": expires})
    assert await post_statement(client, created["username"], created["secret"]) == 200
    clock.advance(61)
    assert await post_statement(client, created["username"], created["secret"]) == 401


async def test_every_change_is_audited_without_secrets(client: Client) -> None:
    created = await create(client, {"name": "audited", "scopes": ["all"]})
    path = f"/admin/credentials/{created['id']}"
    await client.patch(path, json={"name": "renamed", "enabled": True}, headers=ADMIN)
    rotated = await (await client.post(f"{path}/rotate", headers=ADMIN)).json()
    await client.delete(path, headers=ADMIN)
    answer = await client.get("/admin/audit", headers=ADMIN)
    text = await answer.text()
    entries = json.loads(text)["entries"]
    assert [e["action"] for e in entries] == ["delete", "rotate", "update", "create"]
    assert {e["actor"] for e in entries} == {"basic:admin"}
    assert {e["credential_id"] for e in entries} == {created["id"]}
    # Only what changed: `enabled` was already true.
    assert entries[2]["changes"] == {"name": {"from": "audited", "to": "renamed"}}
    for secret in (created["secret"], rotated["secret"], "$2b$"):
        assert secret not in text


async def test_pages_and_search(client: Client) -> None:
    for n in range(5):
        await create(client, {"name": f"course_{n}%", "scopes": ["all/read"]})
    await create(client, {"name": "other", "scopes": ["all/read"]})
    page = await (await client.get("/admin/credentials?limit=2&offset=1", headers=ADMIN)).json()
    assert (page["total"], len(page["credentials"])) == (6, 2)
    assert [c["name"] for c in page["credentials"]] == ["course_1%", "course_2%"]
    found = await (await client.get("/admin/credentials?search=_3%25", headers=ADMIN)).json()
    assert [c["name"] for c in found["credentials"]] == ["course_3%"]
    bad = await client.get("/admin/credentials?limit=0", headers=ADMIN)
    assert bad.status == 400


async def test_a_change_made_by_another_process_arrives_within_the_poll_interval(
    client: Client, config: Config
) -> None:
    """Another worker (or the CLI) writes the same file; this process sees it."""
    other = SqliteCredentials(config.resolve_path(config.data_dir) / CREDENTIALS_FILE)
    await other.open()
    try:
        hashed = Secret(credential("x", "elsewhere-secret", [])["hash"])
        made = await other.create(
            NewCredential("elsewhere", hashed, "made elsewhere", ("all",)), actor="cli:test"
        )

        async def accepted() -> bool:
            return await post_statement(client, "elsewhere", "elsewhere-secret") == 200

        await eventually(accepted, within=2.0, what="the other process's credential")
        await other.update(made.id, {"enabled": False}, actor="cli:test")

        async def refused() -> bool:
            return await post_statement(client, "elsewhere", "elsewhere-secret") == 401

        await eventually(refused, within=2.0, what="the other process's disable")
    finally:
        await other.close()


async def test_the_file_wins_on_a_username_clash(client: Client, config: Config) -> None:
    other = SqliteCredentials(config.resolve_path(config.data_dir) / CREDENTIALS_FILE)
    await other.open()
    try:
        hashed = Secret(credential("x", "database-password", [])["hash"])
        await other.create(NewCredential("lms", hashed, "clash", ("all",)), actor="cli:test")
    finally:
        await other.close()
    await client.app[CREDENTIAL_SOURCES].check_for_change()  # it has read the database
    assert await post_statement(client, "lms", "lms-password") == 200
    assert await post_statement(client, "lms", "database-password") == 401


async def test_the_schema_has_a_version_and_opening_twice_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    applied = []
    for _ in range(2):
        database = SqliteCredentials(path)
        await database.open()
        applied.append(database.migrated)
        await database.close()
    assert applied == [[1, 2, 3, 4, 5], []]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_last_used_is_written_without_counting_as_a_change(tmp_path: Path) -> None:
    database = SqliteCredentials(tmp_path / "db.sqlite3")
    await database.open()
    try:
        made = await database.create(
            NewCredential("u", Secret("$2b$04$" + "a" * 53), "n", ("all",)), actor="t"
        )
        before = await database.generation()
        await database.touch({"u": 1234.0})
        assert await database.generation() == before
        again = await database.get(made.id)
        assert again is not None
        assert again.last_used_at == 1234.0
    finally:
        await database.close()


# -- the real thing: two worker processes sharing one database --------------------------------


async def test_a_change_reaches_every_worker_process_within_2_seconds(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    """Create, then disable, through one worker; fresh connections reach both workers."""
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    port = free_port()
    write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        # No lockout: the disabled credential's 401s are the point, not what follows them.
        {
            "server": {"port": port, "shutdown_timeout": 5},
            "data_dir": "data",
            "lockout": {"enabled": False},
        },
    )
    async with served_gateway(tmp_path, port, workers=2) as served:
        base = served.base
        # A new connection per request: the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def statuses(auth: dict[str, str], times: int = 20) -> set[int]:
                seen = set()
                for _ in range(times):
                    async with session.post(
                        f"{base}/xAPI/statements", json=STATEMENT, headers=auth
                    ) as answer:
                        seen.add(answer.status)
                return seen

            async with session.post(
                f"{base}/admin/credentials",
                json={"name": "fleet", "scopes": ["statements/write"]},
                headers=ADMIN,
            ) as answer:
                assert answer.status == 201, await answer.text()
                created = await answer.json()
            auth = basic(created["username"], created["secret"])
            started = time.monotonic()

            async def everywhere_200() -> bool:
                return await statuses(auth) == {200}

            await eventually(everywhere_200, within=2.0, what="the credential on every worker")
            created_in = time.monotonic() - started

            async with session.patch(
                f"{base}/admin/credentials/{created['id']}",
                json={"enabled": False},
                headers=ADMIN,
            ) as answer:
                assert answer.status == 200
            started = time.monotonic()

            # Until 10 answers in a row are 401: the last 200 is when the last worker
            # still let it in (each 401 pays a bcrypt check, so time that, not the polls).
            last_200, in_a_row = started, 0
            while in_a_row < 10:
                assert time.monotonic() - started < 30, "the disable never reached a worker"
                (status,) = await statuses(auth, times=1)
                if status == 200:
                    last_200, in_a_row = time.monotonic(), 0
                else:
                    assert status == 401
                    in_a_row += 1
            disabled_in = last_200 - started
            assert disabled_in < 2.0
        print(
            f"reached every worker: created in {created_in:.2f} s, disabled in {disabled_in:.2f} s"
        )


async def test_a_login_this_process_does_not_know_reads_the_database_again(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Made or rotated by another process a moment ago: in force before the next poll."""
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(
        tmp_path, str(storage.make_url("/xAPI/")), USERS, {"store": {"poll_interval": 3600}}
    )
    clock = ManualClock()
    client: Client = await aiohttp_client(
        create_app(config, registry=CollectorRegistry(), clock=clock)
    )
    other = SqliteCredentials(config.resolve_path(config.data_dir) / CREDENTIALS_FILE)
    await other.open()
    try:
        first = Secret(credential("x", "first-secret-1", [])["hash"])
        made = await other.create(NewCredential("fresh", first, "n", ("all",)), actor="cli:t")
        assert await post_statement(client, "fresh", "first-secret-1") == 200
        second = Secret(credential("x", "second-secret-2", [])["hash"])
        await other.rotate(made.id, second, actor="cli:t")
        assert await post_statement(client, "fresh", "second-secret-2") == 401  # read 0 s ago
        clock.advance(0.1)  # misses read the database at most every 0.1 s
        assert await post_statement(client, "fresh", "second-secret-2") == 200
        # A disable is no login failure: it waits for the poll (here: never in this test).
        await other.update(made.id, {"enabled": False}, actor="cli:t")
        assert await post_statement(client, "fresh", "second-secret-2") == 200
        await client.app[CREDENTIAL_SOURCES].check_for_change()
        assert await post_statement(client, "fresh", "second-secret-2") == 401
    finally:
        await other.close()


# -- the shapes users' scripts already speak ------------------------------------------------


async def test_rustici_engine_put_creates_then_updates_by_id(client: Client) -> None:
    body = {
        "id": "engine-app",
        "name": "Engine app",
        "info": "https://app.example.org",
        "secret": "engine-secret-1",
        "isEnabled": True,
        "auth": {"xapiCredentialAuthType": "BASICAUTH"},
        "permissionsLevel": {"xapiCredentialPermissionsLevel": "WRITEONLY"},
    }
    answer = await client.put(
        "/admin/xapi/credentials", json={"xapiCredentials": [body]}, headers=ADMIN
    )
    assert answer.status == 200, await answer.text()
    (made,) = (await answer.json())["xapiCredentials"]
    assert made["id"] == "engine-app"
    assert made["permissionsLevel"] == {"xapiCredentialPermissionsLevel": "WRITEONLY"}
    assert "secret" not in made  # chosen, so not echoed
    auth = basic("engine-app", "engine-secret-1")
    assert await post_statement(client, "engine-app", "engine-secret-1") == 200
    assert (await client.get("/xAPI/statements", headers=auth)).status == 403  # write-only

    # The same id again: an update (a bare list works too), here read-only and disabled.
    update = {
        **body,
        "permissionsLevel": {"xapiCredentialPermissionsLevel": "READONLY"},
        "isEnabled": False,
    }
    del update["secret"]
    answer = await client.put("/admin/xapi/credentials", json=[update], headers=ADMIN)
    (updated,) = (await answer.json())["xapiCredentials"]
    assert updated["isEnabled"] is False
    assert await post_statement(client, "engine-app", "engine-secret-1") == 401
    listed = await (await client.get("/admin/xapi/credentials", headers=ADMIN)).json()
    assert [c["id"] for c in listed["xapiCredentials"]] == ["engine-app"]
    assert listed["xapiCredentials"][0]["permissionsLevel"] == {
        "xapiCredentialPermissionsLevel": "READONLY"
    }
    one = await client.get("/admin/xapi/credentials/engine-app", headers=ADMIN)
    assert (await one.json())["name"] == "Engine app"
    assert (await client.delete("/admin/xapi/credentials/engine-app", headers=ADMIN)).status == 204
    assert (await client.get("/admin/xapi/credentials/engine-app", headers=ADMIN)).status == 404


async def test_rustici_engine_without_id_or_secret_gets_them_made(client: Client) -> None:
    answer = await client.put(
        "/admin/xapi/credentials",
        json={"name": "generated", "permissionsLevel": "ROOT", "auth": "BASICAUTH"},
        headers=ADMIN,
    )
    (made,) = (await answer.json())["xapiCredentials"]
    assert made["permissionsLevel"] == {"xapiCredentialPermissionsLevel": "ROOT"}
    answer = await client.get("/xAPI/statements", headers=basic(made["id"], made["secret"]))
    assert answer.status == 200


@pytest.mark.parametrize(
    ("body", "said"),
    [
        # Without the oauth backend there is no key to seal a consumer secret with.
        ({"id": "o", "auth": {"xapiCredentialAuthType": "OAUTH"}}, "need the oauth backend"),
        ({"id": "o", "auth": "KERBEROS"}, "must be BASICAUTH or OAUTH"),
        ({"id": "o", "permissionsLevel": "GOD"}, "permissionsLevel: must be one of"),
        ({"id": "o", "secret": "short"}, "secret: must be 12 to 72"),
        ({"id": "o", "colour": "red"}, "unknown field 'colour'"),
        ([], "the body must be"),
    ],
)
async def test_rustici_engine_bad_input(client: Client, body: Any, said: str) -> None:
    answer = await client.put("/admin/xapi/credentials", json=body, headers=ADMIN)
    assert answer.status == 400
    assert said in (await answer.json())["message"]


async def test_sql_lrs_creds_api(client: Client) -> None:
    answer = await client.post("/admin/creds", json={"scopes": ["all/read"]}, headers=ADMIN)
    assert answer.status == 200, await answer.text()
    made = await answer.json()
    assert set(made) == {"api-key", "secret-key", "scopes"}
    auth = basic(made["api-key"], made["secret-key"])
    assert (await client.get("/xAPI/statements", headers=auth)).status == 200
    assert await post_statement(client, made["api-key"], made["secret-key"]) == 403

    listed = await (await client.get("/admin/creds", headers=ADMIN)).json()
    assert listed == [{"api-key": made["api-key"], "scopes": ["all/read"]}]

    wrong = {**made, "secret-key": "not-the-secret-key", "scopes": ["all"]}
    assert (await client.put("/admin/creds", json=wrong, headers=ADMIN)).status == 404
    # SQL LRS's own scope names (activities_profile, ...) are understood too.
    pair = {**made, "scopes": ["statements/write", "activities_profile"]}
    answer = await client.put("/admin/creds", json=pair, headers=ADMIN)
    assert (await answer.json())["scopes"] == ["statements/write", "activities_profile"]
    assert await post_statement(client, made["api-key"], made["secret-key"]) == 200

    gone = {"api-key": made["api-key"], "secret-key": made["secret-key"]}
    assert (await client.delete("/admin/creds", json=gone, headers=ADMIN)).status == 200
    assert (await client.get("/xAPI/statements", headers=auth)).status == 401
    assert await (await client.get("/admin/creds", headers=ADMIN)).json() == []


async def test_sql_lrs_and_rustici_shapes_need_admin(client: Client) -> None:
    lms = basic("lms", "lms-password")
    for method, path in (
        ("POST", "/admin/creds"),
        ("GET", "/admin/creds"),
        ("PUT", "/admin/xapi/credentials"),
        ("GET", "/admin/xapi/credentials"),
    ):
        answer = await client.request(method, path, json={"scopes": ["all"]}, headers=lms)
        assert answer.status == 403, (method, path)


@pytest.mark.oidc
async def test_an_oidc_admin_manages_credentials_and_is_audited_as_issuer_and_subject(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, oidc_provider: OidcProvider
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        {
            "auth": {
                "backends": ["basic", "oidc"],
                "scope_prefix": "lrs:",
                "oidc": {"issuer": oidc_provider.issuer, "audience": oidc_provider.audience},
            }
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    admin = {"Authorization": f"Bearer {await oidc_provider.token('admin', 'lrs:admin')}"}
    writer = {
        "Authorization": f"Bearer {await oidc_provider.token('lms-a', 'lrs:statements/write')}"
    }

    async def created() -> bool:  # discovery runs in the background at start
        answer = await client.post(
            "/admin/credentials", json={"name": "n", "scopes": ["all"]}, headers=admin
        )
        return answer.status == 201

    await eventually(created, within=10, what="an OIDC admin's create")
    refused = await client.post(
        "/admin/credentials", json={"name": "n", "scopes": ["all"]}, headers=writer
    )
    assert refused.status == 403
    entries = (await (await client.get("/admin/audit", headers=admin)).json())["entries"]
    assert [e["actor"] for e in entries] == [f"oidc:{oidc_provider.issuer}/admin"]
