"""The web admin's single sign-on: OpenID Connect Authorization Code with PKCE.

Against the real OpenID provider (oidc-provider): people sign in on its own login page in
a real Chromium; the gateway exchanges the code with the PKCE verifier, checks the ID
token, and decides admin by the access token's scope or by a configured claim.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from realparts.chromium import Chromium
from realparts.oidc import OidcProvider
from realparts.ralph import RalphServer
from support import FakeLRS, basic, credential, eventually, write_config

from gateway.config.settings import Config
from gateway.http.app import create_app

Client = TestClient[web.Request, web.Application]
USERS = [credential("admin", "admin-password", ["all", "admin"])]
STATEMENT = {
    "actor": {"mbox": "mailto:learner@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course/sso"},
}


def sso_config(
    tmp_path: Path,
    storage: dict[str, Any],
    provider: OidcProvider,
    **oidc: Any,
) -> Config:
    return write_config(
        tmp_path,
        storage["url"],
        USERS,
        {
            "storage": storage,
            "admin_ui": {"secure_cookie": False},
            "auth": {
                "backends": ["basic", "oidc"],
                "scope_prefix": "lrs:",
                "basic": {"credentials_file": "auth.json"},
                "oidc": {
                    "issuer": provider.issuer,
                    "audience": provider.audience,
                    "admin_client_id": "admin-ui",
                    **oidc,
                },
            },
        },
    )


async def discovered(client: Client) -> None:
    async def ready() -> bool:  # discovery runs in the background at start
        return (await client.get("/__heartbeat__")).status == 200

    await eventually(ready, within=10)


async def started(config: Config, aiohttp_server: Any) -> tuple[TestServer, str]:
    server: TestServer = await aiohttp_server(create_app(config, registry=CollectorRegistry()))
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            async with session.get(server.make_url("/__heartbeat__")) as answer:
                return answer.status == 200

        await eventually(ready, within=10)
    return server, str(server.make_url("")).rstrip("/")


async def sign_in_at_provider(chromium: Chromium, base: str, login: str) -> None:
    """From the gateway's login page through the provider's login and consent pages."""
    await chromium.reset()
    await chromium.open(f"{base}/admin/login")
    await chromium.click("#sso")
    await chromium.wait_for_url("/interaction/")
    await chromium.fill("input[name=login]", login)
    await chromium.fill("input[name=password]", "not checked by the dev login")
    await chromium.screenshot("provider login")
    await chromium.click("button.login-submit")
    await chromium.wait_for_text("button.login-submit", "Continue")
    await chromium.screenshot("provider consent")
    await chromium.click("button.login-submit")


@pytest.fixture
async def fake_storage(aiohttp_server: Any) -> dict[str, Any]:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    return {"url": str(storage.make_url("/xAPI/")), "timeout": 5}


# -- in a real browser, through the provider's own pages ----------------------------------


@pytest.mark.chromium
@pytest.mark.ralph
async def test_an_admin_signs_in_at_the_provider_then_manages_a_credential(
    tmp_path: Path,
    ralph: RalphServer,
    oidc_provider: OidcProvider,
    aiohttp_server: Any,
    chromium: Chromium,
) -> None:
    """Sign in (code + PKCE), create a credential, POST with it (200), disable it, 401."""
    storage = {
        "url": ralph.url,
        "basic_username": ralph.username,
        "basic_password": ralph.password,
        "timeout": 10,
    }
    config = sso_config(tmp_path, storage, oidc_provider)
    _, base = await started(config, aiohttp_server)
    await sign_in_at_provider(chromium, base, "alice")
    await chromium.wait_for_text("h1", "Overview")
    assert f"{oidc_provider.issuer}/alice" in await chromium.text("#logout")
    await chromium.click("header a[href='/admin/ui/credentials']")
    await chromium.wait_for_text("h1", "Credentials")
    await chromium.fill("#create input[name=name]", "LMS <sso>")
    await chromium.fill("#create input[name=scopes]", "statements/write")
    await chromium.click("#create-button")
    username = await chromium.text("#shown-username")
    secret = await chromium.text("#shown-secret")
    assert "LMS <sso>" in await chromium.body_text()

    async with aiohttp.ClientSession() as session:

        async def post() -> int:
            async with session.post(
                f"{base}/xAPI/statements", json=STATEMENT, headers=basic(username, secret)
            ) as answer:
                return answer.status

        assert await post() == 200
        await chromium.click(f"tr[data-username='{username}'] button.disable")
        await chromium.wait_for_text(f"tr[data-username='{username}'] td.enabled", "no")
        assert await post() == 401
        # The audit names the person by issuer and subject.
        async with session.get(
            f"{base}/admin/audit", headers=basic("admin", "admin-password")
        ) as answer:
            actors = {entry["actor"] for entry in (await answer.json())["entries"]}
    assert actors == {f"oidc:{oidc_provider.issuer}/alice"}


@pytest.mark.chromium
async def test_someone_whose_token_lacks_the_admin_scope_gets_a_403_page(
    tmp_path: Path,
    fake_storage: dict[str, Any],
    oidc_provider: OidcProvider,
    aiohttp_server: Any,
    chromium: Chromium,
) -> None:
    config = sso_config(tmp_path, fake_storage, oidc_provider, admin_client_id="admin-ui-no-admin")
    _, base = await started(config, aiohttp_server)
    await sign_in_at_provider(chromium, base, "carol")
    await chromium.wait_for_text("#message", "not an administrator")
    await chromium.screenshot("admin sso not an admin")
    await chromium.open(f"{base}/admin/ui/credentials")
    await chromium.wait_for_text("h1", "Log in")  # no session was made


@pytest.mark.chromium
@pytest.mark.parametrize(("login", "admin"), [("alice", True), ("bob", False)])
async def test_a_configured_claim_decides_who_is_admin(
    tmp_path: Path,
    fake_storage: dict[str, Any],
    oidc_provider: OidcProvider,
    aiohttp_server: Any,
    chromium: Chromium,
    login: str,
    admin: bool,
) -> None:
    """alice's ID token lists `lrs-admins` in `groups`; bob's does not."""
    config = sso_config(
        tmp_path,
        fake_storage,
        oidc_provider,
        admin_claim="groups",
        admin_claim_value="lrs-admins",
        admin_scopes=["groups"],
    )
    _, base = await started(config, aiohttp_server)
    await sign_in_at_provider(chromium, base, login)
    if admin:
        await chromium.wait_for_text("h1", "Overview")
    else:
        await chromium.wait_for_text("#message", "not an administrator")


@pytest.mark.chromium
async def test_a_tenant_claim_makes_a_tenants_admin(
    tmp_path: Path,
    fake_storage: dict[str, Any],
    oidc_provider: OidcProvider,
    aiohttp_server: Any,
    chromium: Chromium,
) -> None:
    """dora's `dept` is physics: she administers physics alone; erin's names no tenant
    the gateway has: no session."""
    config = write_config(
        tmp_path,
        fake_storage["url"],
        USERS,
        {
            "admin_ui": {"secure_cookie": False},
            "tenants": [{"name": "physics", "storage": fake_storage}],
            "auth": {
                "backends": ["basic", "oidc"],
                "scope_prefix": "lrs:",
                "oidc": {
                    "issuer": oidc_provider.issuer,
                    "audience": oidc_provider.audience,
                    "admin_client_id": "admin-ui",
                    "admin_claim": "groups",
                    "admin_claim_value": "lrs-admins",
                    "admin_scopes": ["groups"],
                    "tenant_claim": "dept",
                },
            },
        },
    )
    server, base = await started(config, aiohttp_server)
    async with aiohttp.ClientSession() as session:
        for name, tenant in (("default one", None), ("physics one", "physics")):
            async with session.post(
                f"{base}/admin/credentials",
                json={"name": name, "scopes": ["all"], "tenant": tenant},
                headers=basic("admin", "admin-password"),
            ) as answer:
                assert answer.status == 201
    await sign_in_at_provider(chromium, base, "dora")
    await chromium.wait_for_text("h1", "Overview")
    await chromium.open(f"{base}/admin/ui/credentials")
    await chromium.wait_for_text("#bound-tenant", "of tenant physics")
    page = await chromium.body_text()
    assert "physics one" in page
    assert "default one" not in page
    await sign_in_at_provider(chromium, base, "erin")
    await chromium.wait_for_text("#message", "of a tenant this gateway does not have")
    del server


# -- the two legs, without a browser --------------------------------------------------------


@pytest.fixture
async def sso_client(
    tmp_path: Path, fake_storage: dict[str, Any], oidc_provider: OidcProvider, aiohttp_client: Any
) -> Client:
    config = sso_config(tmp_path, fake_storage, oidc_provider)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    await discovered(client)
    return client


async def test_the_login_page_offers_single_sign_on(sso_client: Client) -> None:
    assert 'href="/admin/login/oidc"' in await (await sso_client.get("/admin/login")).text()


async def test_sign_on_starts_with_state_nonce_and_an_s256_challenge(
    sso_client: Client, oidc_provider: OidcProvider
) -> None:
    answer = await sso_client.get("/admin/login/oidc", allow_redirects=False)
    assert answer.status == 302
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == oidc_provider.issuer
    query = {name: values[0] for name, values in parse_qs(location.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == "admin-ui"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert query["scope"].split() == ["openid", "lrs:admin"]
    assert query["redirect_uri"] == str(sso_client.make_url("/admin/callback"))
    assert len(query["state"]) >= 32
    assert len(query["nonce"]) >= 32
    cookie = next(c for c in answer.headers.getall("Set-Cookie") if "lrs_gateway_sso=" in c)
    for flag in ("HttpOnly", "SameSite=Lax", "Path=/admin", "Max-Age=600"):
        assert flag in cookie, cookie
    for value in (query["state"], query["nonce"]):
        assert value not in cookie  # encrypted
    # A second start is a new login with new values.
    again = await sso_client.get("/admin/login/oidc", allow_redirects=False)
    assert parse_qs(urlsplit(again.headers["Location"]).query)["state"][0] != query["state"]


async def start(client: Client) -> tuple[str, str]:
    """Start a sign-on; return its state and the cookie carrying it."""
    answer = await client.get("/admin/login/oidc", allow_redirects=False)
    state = parse_qs(urlsplit(answer.headers["Location"]).query)["state"][0]
    return state, answer.cookies["lrs_gateway_sso"].value


@pytest.mark.parametrize(
    ("query", "with_cookie", "status", "said"),
    [
        ("code=abc&state={state}", False, 400, "expired or was not started here"),
        ("code=abc&state=forged", True, 400, "expired or was not started here"),
        ("error=access_denied&state={state}", True, 403, "did not sign you in (access_denied)"),
        ("state={state}", True, 403, "did not sign you in (no code)"),
        # The real provider refuses a code it never issued.
        ("code=made-up&state={state}", True, 401, "refused the login (invalid_grant)"),
    ],
)
async def test_a_callback_that_is_not_a_good_sign_on_makes_no_session(
    sso_client: Client, query: str, with_cookie: bool, status: int, said: str
) -> None:
    state, cookie = await start(sso_client)
    sso_client.session.cookie_jar.clear()
    headers = {"Cookie": f"lrs_gateway_sso={cookie}"} if with_cookie else {}
    answer = await sso_client.get(
        "/admin/callback?" + query.format(state=state), headers=headers, allow_redirects=False
    )
    assert answer.status == status
    text = await answer.text()
    assert said in text, text
    assert "lrs_gateway_admin=" not in "".join(answer.headers.getall("Set-Cookie", []))


async def test_without_an_admin_client_there_is_no_single_sign_on(
    tmp_path: Path, fake_storage: dict[str, Any], oidc_provider: OidcProvider, aiohttp_client: Any
) -> None:
    config = sso_config(tmp_path, fake_storage, oidc_provider, admin_client_id=None)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    assert "/admin/login/oidc" not in await (await client.get("/admin/login")).text()
    for path in ("/admin/login/oidc", "/admin/callback?code=x&state=y"):
        assert (await client.get(path, allow_redirects=False)).status == 404


async def test_before_the_provider_is_reached_sign_on_says_try_again(
    tmp_path: Path, fake_storage: dict[str, Any], aiohttp_client: Any
) -> None:
    unreachable = OidcProvider(
        issuer="http://127.0.0.1:9",
        discovery_url="",
        jwks_uri="",
        token_endpoint="",
        audience="http://127.0.0.1/lrs-gateway",
        scopes=(),
        clients={},
        log_file=tmp_path / "none.log",
    )
    config = sso_config(tmp_path, fake_storage, unreachable)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    answer = await client.get("/admin/login/oidc", allow_redirects=False)
    assert answer.status == 503
    assert "has not been reached yet" in await answer.text()
    with contextlib.suppress(KeyError):
        assert "lrs_gateway_sso" not in answer.cookies
