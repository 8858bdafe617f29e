"""OIDC bearer tokens: a real OpenID provider in front of real Ralph, and crafted tokens."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry
from realparts.oidc import OidcProvider
from realparts.ralph import RalphServer
from support import XAPI, FakeLRS, basic, credential, eventually, write_config

from gateway.auth.oidc import oidc_agent
from gateway.http.app import create_app
from gateway.xapi.agents import agent_identity

pytestmark = pytest.mark.oidc

Client = TestClient[web.Request, web.Application]
ADMIN = credential("admin", "admin-pw", ["all"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **XAPI}


async def gateway_for(
    aiohttp_client: Any,
    tmp_path: Path,
    storage_url: str,
    issuer: str,
    audience: str | None,
    storage_auth: dict[str, str] | None = None,
    **oidc: Any,
) -> Client:
    extra: dict[str, Any] = {
        "auth": {
            "backends": ["basic", "oidc"],
            "scope_prefix": "lrs:",
            "oidc": {"issuer": issuer, "audience": audience, **oidc},
        }
    }
    if storage_auth:
        extra["storage"] = storage_auth
    config = write_config(tmp_path, storage_url, [ADMIN], extra)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))

    async def discovered() -> bool:  # discovery runs in the background at start
        return (await client.get("/__heartbeat__")).status == 200

    # A gateway that never becomes ready is left for the test itself to report.
    with contextlib.suppress(AssertionError):
        await eventually(discovered, within=5)
    return client


@pytest.fixture
async def with_ralph(
    ralph: RalphServer, oidc_provider: OidcProvider, tmp_path: Path, aiohttp_client: Any
) -> Client:
    return await gateway_for(
        aiohttp_client,
        tmp_path,
        ralph.url,
        oidc_provider.issuer,
        oidc_provider.audience,
        {"basic_username": ralph.username, "basic_password": ralph.password},
    )


def one_statement(answer: Any) -> Any:
    return answer["statements"][0] if "statements" in answer else answer


def statement(actor: str) -> dict[str, Any]:
    return {
        "actor": {"mbox": f"mailto:{actor}@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course/oidc"},
    }


@pytest.mark.ralph
async def test_oidc_statement_carries_the_oidc_agent_as_authority(
    with_ralph: Client, oidc_provider: OidcProvider
) -> None:
    token = await oidc_provider.token("lms-a", "lrs:statements/write")
    response = await with_ralph.post(
        "/xAPI/statements", json=statement("oidc-1"), headers=bearer(token)
    )
    assert response.status == 200, await response.text()
    (sid,) = await response.json()
    response = await with_ralph.get(
        f"/xAPI/statements?statementId={sid}", headers=basic("admin", "admin-pw")
    )
    stored = one_statement(await response.json())
    expected = {"account": {"homePage": oidc_provider.issuer, "name": "lms-a"}}
    assert agent_identity(stored["authority"]) == agent_identity(expected)
    response = await with_ralph.get("/whoami", headers=bearer(token))
    assert await response.json() == {
        "agent": {"objectType": "Agent", **expected},
        "scopes": ["statements/write"],
        "username": f"{oidc_provider.issuer}/lms-a",
        "scheme": "oidc",
    }


@pytest.mark.ralph
async def test_read_mine_isolation_between_two_oidc_clients(
    with_ralph: Client, oidc_provider: OidcProvider
) -> None:
    scope = "lrs:statements/write lrs:statements/read/mine"
    tokens = {c: await oidc_provider.token(c, scope) for c in ("lms-a", "lms-b")}
    actor = f"oidc-shared-{uuid.uuid4().hex[:8]}"
    written: dict[str, set[str]] = {c: set() for c in tokens}
    for client in ("lms-a", "lms-b", "lms-b"):
        response = await with_ralph.post(
            "/xAPI/statements", json=statement(actor), headers=bearer(tokens[client])
        )
        written[client].update(await response.json())
    agent = f"%7B%22mbox%22%3A%22mailto%3A{actor}%40example.com%22%7D"
    for client, token in tokens.items():
        response = await with_ralph.get(f"/xAPI/statements?agent={agent}", headers=bearer(token))
        seen = {s["id"] for s in (await response.json())["statements"]}
        assert seen == written[client]
    analyst = await oidc_provider.token("analyst", "lrs:statements/read")
    response = await with_ralph.get(f"/xAPI/statements?agent={agent}", headers=bearer(analyst))
    assert {s["id"] for s in (await response.json())["statements"]} == (
        written["lms-a"] | written["lms-b"]
    )


@pytest.fixture
async def with_fake_lrs(
    oidc_provider: OidcProvider, tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> Client:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    return await gateway_for(
        aiohttp_client,
        tmp_path,
        str(storage.make_url("/xAPI/")),
        oidc_provider.issuer,
        oidc_provider.audience,
        leeway=0,
    )


async def test_es256_tokens_and_scopes(with_fake_lrs: Client, oidc_provider: OidcProvider) -> None:
    token = await oidc_provider.token("es256", "lrs:all/read")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert (await with_fake_lrs.get("/xAPI/statements", headers=bearer(token))).status == 200
    assert (
        await with_fake_lrs.post("/xAPI/statements", json=statement("x"), headers=bearer(token))
    ).status == 403


async def test_token_without_known_scope_is_403(
    with_fake_lrs: Client, oidc_provider: OidcProvider
) -> None:
    token = await oidc_provider.token("analyst", "lrs:nonsense")
    response = await with_fake_lrs.get("/xAPI/statements", headers=bearer(token))
    assert response.status == 403


async def test_expired_real_token_is_401(
    with_fake_lrs: Client, oidc_provider: OidcProvider
) -> None:
    token = await oidc_provider.token("short-lived", "lrs:all")
    assert (await with_fake_lrs.get("/whoami", headers=bearer(token))).status == 200

    async def refused() -> bool:  # the token lives 2 s (PyJWT checks exp on the real clock)
        return (await with_fake_lrs.get("/whoami", headers=bearer(token))).status == 401

    await eventually(refused, within=5, what="the expired token refused")
    response = await with_fake_lrs.get("/whoami", headers=bearer(token))
    assert response.status == 401
    assert "expired" in (await response.json())["message"]


async def test_wrong_audience_is_401(
    oidc_provider: OidcProvider, tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    client = await gateway_for(
        aiohttp_client,
        tmp_path,
        str(storage.make_url("/xAPI/")),
        oidc_provider.issuer,
        "https://another-lrs.example.org",
    )
    token = await oidc_provider.token("analyst", "lrs:all")
    assert (await client.get("/whoami", headers=bearer(token))).status == 401


async def test_forged_tokens_against_the_real_provider(
    with_fake_lrs: Client, oidc_provider: OidcProvider
) -> None:
    real = await oidc_provider.token("analyst", "lrs:statements/read")
    header, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    widened = (
        base64.urlsafe_b64encode(json.dumps({**claims, "scope": "lrs:all"}).encode())
        .rstrip(b"=")
        .decode()
    )
    async with aiohttp.ClientSession() as session, session.get(oidc_provider.jwks_uri) as r:
        jwks = await r.json()
    rsa_public = jwt.PyJWK(next(k for k in jwks["keys"] if k["kty"] == "RSA")).key
    pem = rsa_public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to HMAC with a PEM key, which is the point of the attack: do it by hand
    hs_header = (
        base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode())
        .rstrip(b"=")
        .decode()
    )
    mac = hmac.new(pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    hs_forgery = f"{hs_header}.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    forgeries = {
        "tampered payload": f"{header}.{widened}.{signature}",
        "HS256 with the IdP's public key": hs_forgery,
        "alg none": f"{none_header}.{payload}.",
        "truncated": f"{header}.{payload}",
    }
    for name, token in forgeries.items():
        response = await with_fake_lrs.get("/whoami", headers=bearer(token))
        assert response.status == 401, name


async def test_unknown_kid_flood_does_not_hammer_the_provider(
    with_fake_lrs: Client, oidc_provider: OidcProvider
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    app = with_fake_lrs.app
    backend_keys = _provider_keys(app)
    before = backend_keys.refreshes
    for _ in range(50):
        token = jwt.encode(
            {
                "iss": oidc_provider.issuer,
                "sub": "x",
                "aud": oidc_provider.audience,
                "iat": now,
                "exp": now + 60,
                "scope": "lrs:all",
            },
            key,
            algorithm="RS256",
            headers={"kid": uuid.uuid4().hex},
        )
        assert (await with_fake_lrs.get("/whoami", headers=bearer(token))).status == 401
    assert backend_keys.refreshes - before <= 1


def _provider_keys(app: web.Application) -> Any:
    from gateway.http.keys import AUTHENTICATOR

    for backend in app[AUTHENTICATOR]._backends:
        if hasattr(backend, "_keys"):
            return backend._keys
    raise AssertionError("no OIDC backend")


class SigningProvider:
    """A provider whose keys the test holds, for claims a real one will not issue."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"
        self.issuer = ""
        self.jwks_hits = 0

    def rotate(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer, "jwks_uri": self.issuer + "/jwks"})

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": self.kid, "use": "sig"}]})

    def sign(self, **claims: Any) -> str:
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": "gw",
            "iat": now,
            "exp": now + 60,
            "scope": "lrs:all",
            "client_id": "app-1",
        }
        return jwt.encode(
            {**base, **claims},
            self.key,
            algorithm="RS256",
            headers={"kid": self.kid, "typ": "at+jwt"},
        )


@pytest.fixture
async def signing(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> tuple[Client, SigningProvider]:
    provider = SigningProvider()
    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", provider.discovery)
    app.router.add_get("/jwks", provider.jwks)
    server: TestServer = await aiohttp_server(app)
    provider.issuer = str(server.make_url("")).rstrip("/")
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    client = await gateway_for(
        aiohttp_client,
        tmp_path,
        str(storage.make_url("/xAPI/")),
        provider.issuer,
        "gw",
        leeway=0,
        unknown_kid_interval=0,
    )
    return client, provider


@pytest.mark.parametrize(
    ("claims", "headers"),
    [
        ({"nbf": int(time.time()) + 600}, {}),
        ({"iat": int(time.time()) + 600}, {}),
        ({"aud": ["other", "audiences"]}, {}),
        ({"nonce": "n-0S6_WzA2Mj"}, {}),  # an ID token
        ({"typ": "ID"}, {}),  # Keycloak's ID token
        ({"sub": ""}, {}),
        ({"exp": None}, {}),
    ],
)
async def test_crafted_claims_are_refused(
    signing: tuple[Client, SigningProvider], claims: dict[str, Any], headers: dict[str, Any]
) -> None:
    client, provider = signing
    assert (await client.get("/whoami", headers=bearer(provider.sign()))).status == 200
    token = provider.sign(**{k: v for k, v in claims.items() if v is not None})
    if claims.get("exp", 0) is None:
        now = int(time.time())
        token = jwt.encode(
            {"iss": provider.issuer, "sub": "u", "aud": "gw", "iat": now},
            provider.key,
            algorithm="RS256",
            headers={"kid": provider.kid},
        )
    assert (await client.get("/whoami", headers=bearer(token))).status == 401


async def test_id_token_type_header_is_refused(signing: tuple[Client, SigningProvider]) -> None:
    client, provider = signing
    now = int(time.time())
    token = jwt.encode(
        {"iss": provider.issuer, "sub": "u", "aud": "gw", "iat": now, "exp": now + 60},
        provider.key,
        algorithm="RS256",
        headers={"kid": provider.kid, "typ": "id_token+jwt"},
    )
    assert (await client.get("/whoami", headers=bearer(token))).status == 401


async def test_key_rotation_needs_no_restart(signing: tuple[Client, SigningProvider]) -> None:
    client, provider = signing
    assert (await client.get("/whoami", headers=bearer(provider.sign()))).status == 200
    provider.rotate()
    assert (await client.get("/whoami", headers=bearer(provider.sign()))).status == 200


async def test_discovery_pending_means_not_ready_and_503(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    issuer = f"http://127.0.0.1:{port}"
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        [ADMIN],
        {"auth": {"backends": ["basic", "oidc"], "oidc": {"issuer": issuer, "audience": "gw"}}},
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    response = await client.get("/__heartbeat__")
    assert response.status == 503
    assert (
        "OIDC" in (await response.json())["checks"]["auth"]
        or "discovery" in (await response.json())["checks"]["auth"]
    )
    token = jwt.encode({"iss": issuer, "sub": "u"}, "k" * 32, algorithm="HS256")
    assert (await client.get("/whoami", headers=bearer(token))).status == 503
    assert (await client.get("/whoami", headers=basic("admin", "admin-pw"))).status == 200


def test_agent_modes() -> None:
    claims = {"iss": "https://idp.example.org/", "sub": "u1", "client_id": "app"}
    assert oidc_agent("account", claims) == {
        "objectType": "Agent",
        "account": {"homePage": "https://idp.example.org/", "name": "u1"},
    }
    assert oidc_agent("openid", claims) == {
        "objectType": "Agent",
        "openid": "https://idp.example.org/u1",
    }
    group = oidc_agent("group", claims)
    assert group["objectType"] == "Group"
    assert [m["account"]["name"] for m in group["member"]] == ["app", "u1"]
    assert oidc_agent("group", {**claims, "sub": "app"})["account"]["name"] == "app"
