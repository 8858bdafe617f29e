"""Shared fixtures: a real Ralph LRS and a real OpenID provider for the whole session."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from realparts.learninglocker import LearningLockerServer, run_learning_locker
from realparts.oidc import OidcClient, OidcProvider, run_oidc_provider
from realparts.ralph import RalphServer, run_ralph


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

        token = await oidc_provider.token("lms-a", "lrs:statements/write")
        headers = {"Authorization": f"Bearer {token}"}
    """
    clients = [
        OidcClient(client_id, secrets.token_urlsafe(24))
        for client_id in ("analyst", "lms-a", "lms-b", "admin")
    ]
    clients.append(OidcClient("short-lived", secrets.token_urlsafe(24), access_token_ttl=1))
    clients.append(OidcClient("es256", secrets.token_urlsafe(24), alg="ES256"))
    with run_oidc_provider(
        tmp_path_factory.mktemp("oidc"),
        clients=clients,
        audience=OIDC_AUDIENCE,
        scopes=OIDC_SCOPES,
    ) as provider:
        yield provider
