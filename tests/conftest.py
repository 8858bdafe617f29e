"""Shared fixtures for the whole session: real Ralph, OpenID provider, Learning Locker, Chromium."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from realparts.chromium import ARTIFACTS_ENV, Chromium, run_chromium
from realparts.learninglocker import ACTIVITY_PROFILES, LearningLockerServer, run_learning_locker
from realparts.oidc import OidcClient, OidcProvider, OidcPublicClient, run_oidc_provider
from realparts.postgres import PostgresServer, run_postgres
from realparts.ralph import RalphServer, run_ralph
from realparts.redis import RedisServer, run_redis


@pytest.fixture(scope="session")
def ralph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    """A Ralph LRS (fs backend) with one `all`-scoped credential for the gateway."""
    with run_ralph(tmp_path_factory.mktemp("ralph")) as server:
        yield server


@pytest.fixture(scope="session")
def ralph_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    """A second, independent Ralph LRS (own data, own credential): a forwarding target."""
    with run_ralph(tmp_path_factory.mktemp("ralph-target")) as server:
        yield server


@pytest.fixture(scope="session")
def ralph_second_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    """A third independent Ralph LRS: a second forwarding target (scale-out tests)."""
    with run_ralph(tmp_path_factory.mktemp("ralph-second-target")) as server:
        yield server


@pytest.fixture(scope="session")
def learning_locker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LearningLockerServer]:
    """Learning Locker's LRS service (npm xapi-statements 5.0.1), statements in memory.

    `learning_locker.url` is `http://127.0.0.1:PORT/xAPI/`; `.authorization` is the
    `Basic ...` header of the one credential it accepts (meant as the gateway's storage
    credential). It serves statements (attachments, signed statements, alternate syntax),
    `about` and `activities`, not the state/profile document APIs, and it replaces every
    statement's `authority` with `.authority`. See tests/test_learninglocker_fixture.py for
    what it answers, status codes and headers.
    """
    with run_learning_locker(tmp_path_factory.mktemp("learninglocker")) as server:
        yield server


@pytest.fixture(scope="session")
def learning_locker_profiles(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LearningLockerServer]:
    """Learning Locker's activity profile service (npm @learninglocker/xapi-activities 4.4.4).

    Same shape as `learning_locker` (`.url` is `http://127.0.0.1:PORT/xAPI/`, one Basic
    credential in `.authorization`, scopes `all`), documents in memory and `storage/`. It
    serves `/xAPI/activities/profile` only (no statements, no about: those are 404s), for
    the whole session: use a fresh activityId per test. Quirks, all pinned by
    tests/test_documents_learninglocker.py:

    - a PUT needs `If-Match` or `If-None-Match`: without, 400 "IfMatch and IfNoneMatch
      header are missing" when the document is absent, 409 when it exists; both at once 400;
    - a failed precondition is 412 (PUT, POST and DELETE); a GET ignores `If-None-Match`
      (200, never 304); DELETE of an absent document is 204; GET of one is 404;
    - ETags are a quoted random sha1 per write; `Last-Modified` is ISO 8601 with
      milliseconds (not an HTTP-date); `since` lists documents updated strictly after it;
    - JSON (`application/json...`) is parsed and served re-serialised, compact, as plain
      `application/json`; POST merges JSON objects (anything else: 400); every other
      content type is stored and served byte for byte, its `Content-Type` as sent;
    - error bodies are `{"errorId": <random uuid>, "message": ...}` (or `"warnings"`).
    """
    workdir = tmp_path_factory.mktemp("learninglocker-profiles")
    with run_learning_locker(workdir, service=ACTIVITY_PROFILES) as server:
        yield server


OIDC_AUDIENCE = "http://127.0.0.1/lrs-gateway"
OIDC_SCOPES = [
    "lrs:all",
    "lrs:all/read",
    "lrs:statements/write",
    "lrs:statements/read",
    "lrs:statements/read/mine",
    "lrs:state",
    "lrs:profile",
    "lrs:admin",
]


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """A real OpenID provider (oidc-provider 9.13.3 on Node) issuing JWT access tokens.

    Issuer `oidc_provider.issuer` = `http://127.0.0.1:PORT` (no trailing slash), audience
    `http://127.0.0.1/lrs-gateway`. Scopes (the gateway's, with the `lrs:` prefix):
    `lrs:all`, `lrs:all/read`, `lrs:statements/write`, `lrs:statements/read`,
    `lrs:statements/read/mine`, `lrs:state`, `lrs:profile`, `lrs:admin`.

    Clients (secrets random per session; every client may ask for any of the scopes above:
    a token carries what the test asks for, unknown scopes are dropped):
    `analyst` (meant for reads), `lms-a` and `lms-b` (two LMSes, i.e. two distinct `sub`s
    for read/mine isolation), `admin`, `short-lived` (access tokens live 1 s, for expiry
    tests), `es256` (tokens signed ES256 instead of RS256). Everyone else: 300 s, RS256.

    People sign in through its login page (Authorization Code + PKCE, public clients with
    a loopback redirect to `/admin/callback` on any port): `admin-ui` may get every scope,
    `admin-ui-no-admin` every one but `lrs:admin`. Any login name is an account; `alice`'s
    ID token carries `groups: ["lrs-admins"]`, `bob`'s `groups: ["staff"]` (scope `groups`);
    `dora` and `erin` are admins by `groups` with `dept` physics and chemistry.

        token = await oidc_provider.token("lms-a", "lrs:statements/write")
        headers = {"Authorization": f"Bearer {token}"}
    """
    clients = [
        OidcClient(client_id, secrets.token_urlsafe(24))
        for client_id in ("analyst", "lms-a", "lms-b", "admin")
    ]
    clients.append(OidcClient("short-lived", secrets.token_urlsafe(24), access_token_ttl=1))
    clients.append(OidcClient("es256", secrets.token_urlsafe(24), alg="ES256"))
    public_clients = [
        OidcPublicClient("admin-ui"),
        OidcPublicClient(
            "admin-ui-no-admin", scopes=tuple(s for s in OIDC_SCOPES if s != "lrs:admin")
        ),
    ]
    with run_oidc_provider(
        tmp_path_factory.mktemp("oidc"),
        clients=clients,
        audience=OIDC_AUDIENCE,
        scopes=OIDC_SCOPES,
        public_clients=public_clients,
        accounts={
            "alice": {"groups": ["lrs-admins"]},
            "bob": {"groups": ["staff"]},
            "dora": {"groups": ["lrs-admins"], "dept": "physics"},
            "erin": {"groups": ["lrs-admins"], "dept": "chemistry"},
        },
    ) as provider:
        yield provider


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """A real headless Chromium (Debian's /usr/bin/chromium via /usr/bin/chromedriver).

    One browser for the session (window 1280x900, so the viewport is 1280 wide), fresh
    profile, offline (only 127.0.0.1 and localhost resolve); quit at the end with nothing
    left running. Its helpers are coroutines (selenium runs in a worker thread, so the page
    can talk to an aiohttp server in the test's loop); waits are explicit, `chromium.timeout`
    s by default. Screenshots go
    to `chromium.artifacts_dir`: `$LRS_GATEWAY_TEST_ARTIFACTS/chromium` when set, else a
    pytest temporary directory. Mark the tests `@pytest.mark.chromium`; start each with
    `await chromium.reset()` (blank page, no cookies).

        await chromium.open(f"{server_url}/admin/login")
        await chromium.fill("input[name=username]", "admin")
        await chromium.click("button[type=submit]")
        await chromium.wait_for_text("h1", "Credentials")
        await chromium.screenshot("admin-credentials")
    """
    artifacts = os.environ.get(ARTIFACTS_ENV)
    artifacts_dir = (
        Path(artifacts) / "chromium" if artifacts else tmp_path_factory.mktemp("chromium-artifacts")
    )
    with run_chromium(artifacts_dir, workdir=tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's, >= 15), a throwaway cluster for the session.

    It listens on 127.0.0.1 only, on a free port (`postgres.port`); `postgres.dsn` is
    `postgresql://lrs_gateway:PASSWORD@127.0.0.1:PORT/lrs_gateway_test`, a superuser with a
    password generated per session, so asyncpg takes it as it is. The database
    `lrs_gateway_test` is shared by every test: `dsn = postgres.new_database()` gives a test
    its own empty one (no rows or tables of other tests). `postgres.stop()` then
    `postgres.start()` cut every connection and bring back the same data on the same port
    (both block until done; run them with `asyncio.to_thread` if the test's own server
    must keep serving meanwhile). A test that stops it must start it again (`finally`).
    Not durable (fsync off); never runs as root (as `postgres` when the tests are root).
    Mark the tests `@pytest.mark.postgres`.

        connection = await asyncpg.connect(postgres.new_database())
    """
    with run_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis server (Debian's redis-server) for the session, no persistence.

    `redis.url` is `redis://127.0.0.1:PORT/0` (loopback only, no password). The server is
    shared by every test: call `redis.flush()` first (FLUSHALL), or use keys of your own.
    `redis.stop()` then `redis.start()` cut every connection and bring back an EMPTY server
    on the same port (nothing is saved, like a Redis without persistence after a restart);
    a test that stops it must start it again (`finally`). Never runs as root (as `redis`
    when the tests are root). Mark the tests `@pytest.mark.redis`.

        client = aioredis.from_url(redis.url)  # import redis.asyncio as aioredis
    """
    with run_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
