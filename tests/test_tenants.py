"""Tenants: two real Ralphs as two tenants' storage LRSes, each with its own forwarding.

A credential's tenant picks the storage and targets of everything it does: writes land in
its tenant's Ralph only, reads (and `more` pages) come from there only, its statements are
forwarded to its tenant's targets only; a tenant whose storage is down harms no other; a
tenant nobody configured is refused, never served by the default tenant.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from realparts.process import free_port
from realparts.ralph import RalphServer
from support import FakeLRS, basic, credential, eventually, gateway_env, write_config
from test_callback_and_tokens import CallbackService
from test_forwarding_real import ralph_one, ralph_target_entry
from test_oidc import SigningProvider

from gateway.auth.credentials import CredentialsError
from gateway.auth.principal import Principal
from gateway.auth.store import CredentialStore
from gateway.errors import Forbidden
from gateway.http.app import create_app
from gateway.http.tenancy import check_tenant

pytestmark = pytest.mark.ralph

Client = TestClient[web.Request, web.Application]
XAPI = {"X-Experience-API-Version": "1.0.3"}
SECRET = "a-token-signing-secret-of-32-bytes-or-more"


def in_tenant(entry: dict[str, Any], tenant: str) -> dict[str, Any]:
    return {**entry, "tenant": tenant}


USERS = [
    credential("lms", "lms-pw", ["all", "tokens/issue"]),
    in_tenant(credential("prof", "prof-pw", ["all", "tokens/issue"]), "physics"),
    in_tenant(credential("lost", "lost-pw", ["all"]), "offline"),
]


@pytest.fixture
async def gateway(
    ralph: RalphServer,
    ralph_target: RalphServer,
    ralph_second_target: RalphServer,
    tmp_path: Path,
    aiohttp_client: Any,
) -> Client:
    config = write_config(
        tmp_path,
        ralph.url,
        USERS,
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "data_dir": "data",
            "auth": {"backends": ["basic", "token"], "tokens": {"secret": SECRET}},
            "tenants": [
                {
                    "name": "physics",
                    "storage": {
                        "url": ralph_target.url,
                        "basic_username": ralph_target.username,
                        "basic_password": ralph_target.password,
                    },
                    "forwardings": [
                        ralph_target_entry(ralph_second_target, "physics-copy", batch_size=10)
                    ],
                },
                {  # its storage is down: nothing listens there
                    "name": "offline",
                    "storage": {"url": f"http://127.0.0.1:{free_port()}/xAPI/", "timeout": 2},
                },
            ],
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


def statement(mbox: str, n: int) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"mbox": mbox},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": f"http://example.com/tenants/{n}"},
    }


async def test_each_tenant_writes_reads_and_forwards_in_its_own_lrs(
    gateway: Client,
    ralph: RalphServer,
    ralph_target: RalphServer,
    ralph_second_target: RalphServer,
) -> None:
    lms, prof = {**basic("lms", "lms-pw"), **XAPI}, {**basic("prof", "prof-pw"), **XAPI}
    mbox = f"mailto:learner-{uuid.uuid4().hex[:10]}@example.org"
    default_ones = [statement(mbox, n) for n in range(2)]
    physics_ones = [statement(mbox, n) for n in range(5)]
    response = await gateway.post("/xAPI/statements", json=default_ones, headers=lms)
    assert response.status == 200, await response.text()
    response = await gateway.post("/xAPI/statements", json=physics_ones, headers=prof)
    assert response.status == 200, await response.text()

    async with aiohttp.ClientSession() as session:
        for item in default_ones:
            assert await ralph_one(session, ralph, item["id"]) is not None
            assert await ralph_one(session, ralph_target, item["id"]) is None
        for item in physics_ones:
            assert await ralph_one(session, ralph_target, item["id"]) is not None
            assert await ralph_one(session, ralph, item["id"]) is None

        # Reads: each tenant sees its own, page after page (`more` stays in the tenant).
        query = urlencode({"agent": json.dumps({"mbox": mbox}), "limit": "2"})
        seen: list[str] = []
        url = f"/xAPI/statements?{query}"
        for _ in range(10):
            page = await gateway.get(url, headers=prof)
            assert page.status == 200, await page.text()
            body = await page.json()
            seen += [s["id"] for s in body["statements"]]
            if not body["more"]:
                break
            url = body["more"]
        assert sorted(seen) == sorted(s["id"] for s in physics_ones)
        page = await gateway.get(f"/xAPI/statements?{query}", headers=lms)
        assert {s["id"] for s in (await page.json())["statements"]} == {
            s["id"] for s in default_ones
        }

        # Forwarding: physics's targets get physics's statements, and only those.
        async def forwarded() -> bool:
            found = [await ralph_one(session, ralph_second_target, s["id"]) for s in physics_ones]
            return all(found)

        await eventually(forwarded, within=20, what="physics's statements in its target")
        for item in default_ones:
            assert await ralph_one(session, ralph_second_target, item["id"]) is None

    # A token carries its issuer's tenant.
    minted = await gateway.post("/token", json={"scopes": ["statements/write"]}, headers=prof)
    token = (await minted.json())["token"]
    by_token = statement(mbox, 99)
    response = await gateway.post(
        "/xAPI/statements", json=by_token, headers={"Authorization": f"Bearer {token}", **XAPI}
    )
    assert response.status == 200
    async with aiohttp.ClientSession() as session:
        assert await ralph_one(session, ralph_target, by_token["id"]) is not None

    # The status and the metrics name every tenant's target and storage once.
    status = await gateway.get("/admin/forwarding", headers=basic("lms", "lms-pw"))
    assert status.status == 403  # lms holds no admin scope
    metrics = await (await gateway.get("/metrics")).text()
    upstreams = {
        sample.labels["target"]
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "lrs_gateway_upstream_requests_total"
    }
    assert {"storage", "storage:physics", "physics-copy"} <= upstreams


async def test_a_tenant_whose_storage_is_down_harms_no_other(gateway: Client) -> None:
    lost = {**basic("lost", "lost-pw"), **XAPI}
    lms = {**basic("lms", "lms-pw"), **XAPI}
    response = await gateway.post(
        "/xAPI/statements", json=statement("mailto:a@b.org", 1), headers=lost
    )
    assert response.status in (502, 503), await response.text()
    assert "storage" in (await response.json())["message"]
    response = await gateway.post(
        "/xAPI/statements", json=statement("mailto:a@b.org", 2), headers=lms
    )
    assert response.status == 200
    ready = await gateway.get("/__heartbeat__")
    assert ready.status == 200  # the default tenant's storage answers: the replica serves


async def test_a_tenant_nobody_configured_is_refused_never_the_default(
    ralph: RalphServer, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        ralph.url,
        [in_tenant(credential("stray", "stray-pw", ["all"]), "chemistry")],
        {"tenants": [{"name": "physics", "storage": {"url": ralph.url}}]},
    )
    store = CredentialStore(
        tmp_path / "auth.json",
        account_homepage="https://lms.example.org",
        scope_prefix="",
        reload_interval=1,
        tenants=frozenset(t.name for t in config.tenants),
    )
    with pytest.raises(CredentialsError, match="no tenant 'chemistry' \\(tenants: physics\\)"):
        await store.load()
    checked = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(tmp_path / "config.yaml"),
            "check-config",
        ],
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=60,
        check=False,
    )
    assert checked.returncode == 1
    assert "no tenant 'chemistry'" in checked.stdout + checked.stderr


async def test_a_callers_tenant_from_the_callback_or_a_token_must_be_configured(
    gateway: Client,
) -> None:
    """What the file cannot refuse at load (a callback's answer, an OIDC claim, a token
    minted before a tenant was removed) is refused per request: 403, never the default."""
    principal = Principal(
        "x", {"mbox": "mailto:x@example.org"}, frozenset({"all"}), "callback", tenant="chemistry"
    )
    with pytest.raises(Forbidden, match="no tenant 'chemistry'"):
        check_tenant(gateway.app, principal)
    check_tenant(
        gateway.app,
        Principal("y", {"mbox": "mailto:y@example.org"}, frozenset(), "oidc", tenant="physics"),
    )


async def test_the_oidc_claim_and_the_callback_answer_name_the_tenant(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Scripted identity sources (the real provider issues no custom claims): whatever
    names the tenant, the request goes to that tenant's storage, and an unknown one is 403."""
    provider, service = SigningProvider(), CallbackService()
    idp = web.Application()
    idp.router.add_get("/.well-known/openid-configuration", provider.discovery)
    idp.router.add_get("/jwks", provider.jwks)
    idp_server: TestServer = await aiohttp_server(idp)
    provider.issuer = str(idp_server.make_url("")).rstrip("/")
    callback_app = web.Application()
    callback_app.router.add_post("/verify", service.handle)
    callback: TestServer = await aiohttp_server(callback_app)
    default_lrs, physics_lrs = FakeLRS(), FakeLRS()
    default_server: TestServer = await aiohttp_server(default_lrs.app())
    physics_server: TestServer = await aiohttp_server(physics_lrs.app())
    config = write_config(
        tmp_path,
        str(default_server.make_url("/xAPI/")),
        [],
        {
            "auth": {
                "backends": ["callback", "oidc"],
                "scope_prefix": "lrs:",
                "oidc": {"issuer": provider.issuer, "audience": "gw", "tenant_claim": "dept"},
                "callback": {"url": str(callback.make_url("/verify"))},
            },
            "tenants": [
                {"name": "physics", "storage": {"url": str(physics_server.make_url("/xAPI/"))}}
            ],
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    await eventually(lambda: _status(client.get("/__heartbeat__"), 200), within=5, what="discovery")

    def posted(lrs: FakeLRS) -> int:
        return sum(1 for r in lrs.seen if r.method == "POST")

    async def post(headers: dict[str, str], n: int) -> Any:
        return await client.post(
            "/xAPI/statements", json=statement("mailto:o@x.org", n), headers=headers
        )

    by_claim = {"Authorization": f"Bearer {provider.sign(dept='physics')}", **XAPI}
    response = await client.post(
        "/xAPI/statements", json=statement("mailto:o@x.org", 1), headers=by_claim
    )
    assert response.status == 200, await response.text()
    assert (posted(physics_lrs), posted(default_lrs)) == (1, 0)
    no_claim = {"Authorization": f"Bearer {provider.sign()}", **XAPI}
    response = await client.post(
        "/xAPI/statements", json=statement("mailto:o@x.org", 2), headers=no_claim
    )
    assert response.status == 200
    assert (posted(physics_lrs), posted(default_lrs)) == (1, 1)  # no claim: the default
    unknown = {"Authorization": f"Bearer {provider.sign(dept='chemistry')}", **XAPI}
    response = await client.post(
        "/xAPI/statements", json=statement("mailto:o@x.org", 3), headers=unknown
    )
    assert response.status == 403
    assert "no tenant 'chemistry'" in (await response.json())["message"]

    service.answers["clerk"] = {"verified": True, "permission": "ROOT", "tenant": "physics"}
    service.answers["stray"] = {"verified": True, "permission": "ROOT", "tenant": "chemistry"}
    response = await client.post(
        "/xAPI/statements",
        json=statement("mailto:o@x.org", 4),
        headers={**basic("clerk", "pw"), **XAPI},
    )
    assert response.status == 200, await response.text()
    assert (posted(physics_lrs), posted(default_lrs)) == (2, 1)
    response = await client.post(
        "/xAPI/statements",
        json=statement("mailto:o@x.org", 5),
        headers={**basic("stray", "pw"), **XAPI},
    )
    assert response.status == 403
    assert (posted(physics_lrs), posted(default_lrs)) == (2, 1)  # nothing went anywhere


async def _status(request: Any, expected: int) -> bool:
    async with request as response:
        return bool(response.status == expected)


async def test_a_database_credential_carries_its_tenant(
    ralph: RalphServer, ralph_target: RalphServer, tmp_path: Path, aiohttp_client: Any
) -> None:
    """Made through the admin API with a tenant, a credential writes to that tenant's LRS;
    a tenant nobody configured is a 400 at creation and on change."""
    config = write_config(
        tmp_path,
        ralph.url,
        [credential("admin", "admin-pw", ["all", "admin"])],
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "data_dir": "data",
            "tenants": [
                {
                    "name": "physics",
                    "storage": {
                        "url": ralph_target.url,
                        "basic_username": ralph_target.username,
                        "basic_password": ralph_target.password,
                    },
                }
            ],
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    admin = basic("admin", "admin-pw")
    made = await client.post(
        "/admin/credentials",
        json={"name": "physics LMS", "scopes": ["statements/write"], "tenant": "physics"},
        headers=admin,
    )
    assert made.status == 201, await made.text()
    body = await made.json()
    assert body["tenant"] == "physics"
    item = statement("mailto:db@example.org", 1)
    response = await client.post(
        "/xAPI/statements", json=item, headers={**basic(body["username"], body["secret"]), **XAPI}
    )
    assert response.status == 200, await response.text()
    async with aiohttp.ClientSession() as session:
        assert await ralph_one(session, ralph_target, item["id"]) is not None
        assert await ralph_one(session, ralph, item["id"]) is None
    refused = await client.post(
        "/admin/credentials",
        json={"name": "x", "scopes": ["all"], "tenant": "chemistry"},
        headers=admin,
    )
    assert refused.status == 400
    assert "no tenant 'chemistry'" in (await refused.json())["message"]
    changed = await client.patch(
        f"/admin/credentials/{body['id']}", json={"tenant": "chemistry"}, headers=admin
    )
    assert changed.status == 400
    moved = await client.patch(
        f"/admin/credentials/{body['id']}", json={"tenant": None}, headers=admin
    )
    assert moved.status == 200
    assert (await moved.json())["tenant"] is None
