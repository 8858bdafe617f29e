"""`lrs-gateway credentials ...` against the database file, beside a running gateway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import FakeLRS, basic, credential, write_config

from gateway.config.settings import Config
from gateway.http.app import create_app
from gateway.http.keys import CREDENTIAL_SOURCES

Client = TestClient[web.Request, web.Application]
USERS = [credential("admin", "admin-password", ["all", "admin"])]
STATEMENT = {
    "actor": {"mbox": "mailto:learner@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course/1"},
}


@pytest.fixture
async def config(tmp_path: Path, aiohttp_server: Any) -> Config:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    return write_config(tmp_path, str(storage.make_url("/xAPI/")), USERS)


def cli(config: Config, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LRS_GATEWAY")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            f"{config.base_dir}/config.yaml",
            "credentials",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.lstrip().startswith(("{", "[")) else done.stdout


async def test_the_cli_manages_what_a_running_gateway_uses(
    config: Config, aiohttp_client: Any
) -> None:
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    made = ok(cli(config, "create", "--name", "LMS", "-s", "statements/write", "--json"))
    auth = basic(made["username"], made["secret"])
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=auth)).status == 200

    listed = ok(cli(config, "list", "--json"))
    assert [c["username"] for c in listed] == [made["username"]]
    assert "secret" not in json.dumps(listed)
    shown = ok(cli(config, "show", made["username"], "--json"))
    assert shown["id"] == made["id"]

    assert ok(cli(config, "disable", made["id"], "--json"))["enabled"] is False
    await client.app[CREDENTIAL_SOURCES].check_for_change()  # the poll, without waiting
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=auth)).status == 401
    ok(cli(config, "enable", made["username"]))

    rotated = ok(cli(config, "rotate", made["username"], "--json"))
    new_auth = basic(made["username"], rotated["secret"])
    await client.app[CREDENTIAL_SOURCES].check_for_change()
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=auth)).status == 401
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=new_auth)).status == 200

    assert "deleted" in ok(cli(config, "delete", made["id"]))
    assert ok(cli(config, "list", "--json")) == []

    # The gateway's audit shows the CLI's changes, by OS user, without secrets.
    answer = await client.get("/admin/audit", headers=basic("admin", "admin-password"))
    entries = (await answer.json())["entries"]
    assert [e["action"] for e in entries] == [
        "delete",
        "rotate",
        "update",
        "update",
        "create",
    ]
    assert all(e["actor"].startswith("cli:") for e in entries)
    assert made["secret"] not in json.dumps(entries)


async def test_a_slow_reload_never_undoes_a_newer_one(
    config: Config, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll's read, begun just before the CLI's change and slow to finish, must not
    overwrite a read that saw the change (a newly made credential then got a 401)."""
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    sources = client.app[CREDENTIAL_SOURCES]
    database = sources.database
    assert database is not None
    real_all = database.all
    read, release = asyncio.Event(), asyncio.Event()

    async def slow_all() -> Any:
        rows = await real_all()  # as the database was before the change below
        read.set()
        await release.wait()
        return rows

    monkeypatch.setattr(database, "all", slow_all)
    slow = asyncio.create_task(sources.load())  # the poll, just before the change
    await read.wait()
    monkeypatch.setattr(database, "all", real_all)
    made = ok(cli(config, "create", "--name", "LMS", "-s", "statements/write", "--json"))
    fresh = asyncio.create_task(sources.check_for_change())  # a read after it
    await asyncio.sleep(0.1)  # as far as it gets before the slow read ends
    release.set()
    await asyncio.gather(slow, fresh)
    assert sources.get(made["username"]) is not None
    auth = basic(made["username"], made["secret"])
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=auth)).status == 200


def test_a_chosen_secret_comes_from_stdin_and_is_not_printed(config: Config) -> None:
    done = cli(
        config,
        "create",
        "--name",
        "n",
        "-s",
        "all/read",
        "-u",
        "reader",
        "--secret-stdin",
        "--json",
        stdin="a-long-enough-secret\n",
    )
    made = ok(done)
    assert made["username"] == "reader"
    assert "secret" not in made
    assert "a-long-enough-secret" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "said"),
    [
        (["create", "--name", "n", "-s", "everything"], "", "scopes: unknown 'everything'"),
        (["create", "--name", "n", "-s", "all", "-u", "admin"], "", "credentials file"),
        (["create", "--name", "n", "-s", "all", "--secret-stdin"], "short\n", "secret: must be"),
        (["show", "nobody"], "", "no credential with id or username 'nobody'"),
        (["rotate", "nobody"], "", "no credential"),
        (["import", "missing.json"], "", "missing.json"),
    ],
)
def test_problems_are_one_line_and_exit_1(
    config: Config, args: list[str], stdin: str, said: str
) -> None:
    done = cli(config, *args, stdin=stdin)
    assert done.returncode == 1
    assert said in done.stderr
    assert "Traceback" not in done.stderr


def test_a_duplicate_username_is_refused(config: Config) -> None:
    ok(cli(config, "create", "--name", "a", "-s", "all", "-u", "twice"))
    done = cli(config, "create", "--name", "b", "-s", "all", "-u", "twice")
    assert done.returncode == 1
    assert "taken" in done.stderr


async def test_import_moves_ralph_and_rustici_files_into_the_database(
    config: Config, tmp_path: Path, aiohttp_client: Any
) -> None:
    ralph = tmp_path / "ralph.json"
    ralph.write_text(json.dumps([credential("moodle", "moodle-password", ["statements/write"])]))
    rustici = tmp_path / "rustici.txt"
    rustici.write_text("# lines\nengine:engine-password:write-only\n")
    assert "imported 1" in ok(cli(config, "import", str(ralph)))
    assert "imported 1" in ok(cli(config, "import", str(rustici)))
    again = ok(cli(config, "import", str(ralph)))
    assert "skipped 1 already in the database: moodle" in again
    listed = {c["username"]: c for c in ok(cli(config, "list", "--json"))}
    assert set(listed) == {"moodle", "engine"}
    assert listed["moodle"]["agent"] == {"mbox": "mailto:moodle@example.com"}

    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    for username, password in (("moodle", "moodle-password"), ("engine", "engine-password")):
        answer = await client.post(
            "/xAPI/statements", json=STATEMENT, headers=basic(username, password)
        )
        assert answer.status == 200, username


async def test_credentials_create_takes_a_configured_tenant_only(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    default_lrs, physics_lrs = FakeLRS(), FakeLRS()
    default: TestServer = await aiohttp_server(default_lrs.app())
    physics: TestServer = await aiohttp_server(physics_lrs.app())
    config = write_config(
        tmp_path,
        str(default.make_url("/xAPI/")),
        USERS,
        {"tenants": [{"name": "physics", "storage": {"url": str(physics.make_url("/xAPI/"))}}]},
    )
    refused = cli(config, "create", "--name", "x", "-s", "all", "--tenant", "chemistry")
    assert refused.returncode == 1
    assert "no tenant 'chemistry' is configured (tenants: physics)" in refused.stderr
    made = ok(cli(config, "create", "--name", "LMS", "-s", "all", "--tenant", "physics", "--json"))
    assert made["tenant"] == "physics"
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    auth = basic(made["username"], made["secret"])
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=auth)).status == 200
    posted = [r for r in physics_lrs.seen if r.method == "POST"]
    assert len(posted) == 1  # to the tenant's LRS
    assert not [r for r in default_lrs.seen if r.method == "POST"]
