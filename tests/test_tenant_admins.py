"""Tenant admins: `admin` bound to a tenant reaches that tenant alone.

Two real Ralphs are the two tenants' storage. The gateway's admin (no tenant) sees and
filters every tenant; physics's admin lists, creates, changes, audits, forwards and lifts
lockouts within physics only (the native API, Rustici's and SQL LRS's, and the web
admin), and everything of another tenant answers as if it were not there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from realparts.ralph import RalphServer
from support import FakeTarget, basic, credential, eventually, write_config

from gateway.http.app import create_app

pytestmark = pytest.mark.ralph

Client = TestClient[web.Request, web.Application]
XAPI = {"X-Experience-API-Version": "1.0.3"}
ROOT = basic("root", "root-password")
PHYS = basic("physadmin", "physadmin-password")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def in_tenant(entry: dict[str, Any], tenant: str) -> dict[str, Any]:
    return {**entry, "tenant": tenant}


USERS = [
    credential("root", "root-password", ["all", "admin"]),
    credential("lms", "lms-password", ["all"]),
    in_tenant(credential("physadmin", "physadmin-password", ["all", "admin"]), "physics"),
    in_tenant(credential("prof", "prof-password", ["all"]), "physics"),
]


def target(name: str, server: TestServer) -> dict[str, Any]:
    """A forwarding target that refuses for good (400): its statements are dead letters."""
    return {
        "name": name,
        "url": str(server.make_url("/xAPI/statements")),
        "is_active": True,
        "max_retries": 0,
        "timeout": 5,
    }


@pytest.fixture
async def gateway(
    ralph: RalphServer,
    ralph_target: RalphServer,
    tmp_path: Path,
    aiohttp_client: Any,
    aiohttp_server: Any,
) -> Client:
    archive, copy = FakeTarget(down=True, refusal=400), FakeTarget(down=True, refusal=400)
    archive_server: TestServer = await aiohttp_server(archive.app())
    copy_server: TestServer = await aiohttp_server(copy.app())
    config = write_config(
        tmp_path,
        ralph.url,
        USERS,
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "data_dir": "data",
            "admin_ui": {"secure_cookie": False},
            "forwardings": [target("archive", archive_server)],
            "tenants": [
                {
                    "name": "physics",
                    "storage": {
                        "url": ralph_target.url,
                        "basic_username": ralph_target.username,
                        "basic_password": ralph_target.password,
                    },
                    "forwardings": [target("physics-copy", copy_server)],
                }
            ],
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


async def make(client: Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    answer = await client.post(
        "/admin/credentials", json={"scopes": ["statements/write"], **fields}, headers=headers
    )
    assert answer.status == 201, await answer.text()
    made: dict[str, Any] = await answer.json()
    return made


async def usernames(client: Client, path: str, headers: dict[str, str]) -> set[str]:
    answer = await client.get(path, headers=headers)
    assert answer.status == 200, await answer.text()
    return {c["username"] for c in (await answer.json())["credentials"]}


async def test_a_tenants_admin_manages_its_tenants_credentials_alone(gateway: Client) -> None:
    mine = await make(gateway, ROOT, name="physics LMS", tenant="physics")
    theirs = await make(gateway, ROOT, name="default LMS")
    assert theirs["tenant"] is None
    made = await make(gateway, PHYS, name="made by physics")
    assert made["tenant"] == "physics"  # no tenant given: the admin's own
    named_default = await make(gateway, ROOT, name="named default", tenant="default")
    assert named_default["tenant"] is None

    assert await usernames(gateway, "/admin/credentials", PHYS) == {
        mine["username"],
        made["username"],
    }
    everyone = await usernames(gateway, "/admin/credentials", ROOT)
    assert {mine["username"], theirs["username"], made["username"]} <= everyone
    assert await usernames(gateway, "/admin/credentials?tenant=physics", ROOT) == {
        mine["username"],
        made["username"],
    }
    assert theirs["username"] in await usernames(gateway, "/admin/credentials?tenant=default", ROOT)
    assert mine["username"] not in await usernames(
        gateway, "/admin/credentials?tenant=default", ROOT
    )

    # Another tenant's credential is not there for physics's admin: 404, whatever the call.
    path = f"/admin/credentials/{theirs['id']}"
    assert (await gateway.get(path, headers=PHYS)).status == 404
    assert (await gateway.patch(path, json={"name": "x"}, headers=PHYS)).status == 404
    assert (await gateway.post(f"{path}/rotate", headers=PHYS)).status == 404
    assert (await gateway.delete(path, headers=PHYS)).status == 404
    assert (await gateway.get(path, headers=ROOT)).status == 200  # still there

    # It cannot move a credential out, nor make one elsewhere, nor list elsewhere.
    for tenant in ("default", None):
        moved = await gateway.patch(
            f"/admin/credentials/{made['id']}", json={"tenant": tenant}, headers=PHYS
        )
        if tenant is None:  # "no tenant" from a tenant's admin: stays in its tenant
            assert moved.status == 200
            assert (await moved.json())["tenant"] == "physics"
        else:
            assert moved.status == 403
    refused = await gateway.post(
        "/admin/credentials",
        json={"name": "x", "scopes": ["all"], "tenant": "default"},
        headers=PHYS,
    )
    assert refused.status == 403
    assert "manages only its credentials" in (await refused.json())["message"]
    assert (await gateway.get("/admin/credentials?tenant=default", headers=PHYS)).status == 403
    unknown = await gateway.get("/admin/credentials?tenant=chemistry", headers=ROOT)
    assert unknown.status == 400
    assert "no tenant 'chemistry'" in (await unknown.json())["message"]

    # What it changes works: a rotated secret writes to physics's Ralph.
    rotated = await gateway.post(f"/admin/credentials/{mine['id']}/rotate", headers=PHYS)
    assert rotated.status == 200
    secret = (await rotated.json())["secret"]
    wrote = await gateway.post(
        "/xAPI/statements",
        json={
            "actor": {"mbox": "mailto:t@example.org"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
            "object": {"id": "http://example.com/tenant-admins"},
        },
        headers={**basic(mine["username"], secret), **XAPI},
    )
    assert wrote.status == 200, await wrote.text()

    # The audit: physics's admin reads physics's entries only; the gateway's admin filters.
    audit = await (await gateway.get("/admin/audit?limit=500", headers=PHYS)).json()
    assert audit["entries"]
    assert {e["tenant"] for e in audit["entries"]} == {"physics"}
    assert {e["username"] for e in audit["entries"]} == {mine["username"], made["username"]}
    everything = await (await gateway.get("/admin/audit?limit=500", headers=ROOT)).json()
    assert everything["total"] > audit["total"]
    physics_only = await (
        await gateway.get("/admin/audit?limit=500&tenant=physics", headers=ROOT)
    ).json()
    assert physics_only["total"] == audit["total"]


async def test_a_tenants_admin_sees_and_replays_its_own_targets(gateway: Client) -> None:
    for headers in (
        {**basic("lms", "lms-password"), **XAPI},
        {**basic("prof", "prof-password"), **XAPI},
    ):
        answer = await gateway.post(
            "/xAPI/statements",
            json={
                "actor": {"mbox": "mailto:f@example.org"},
                "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
                "object": {"id": "http://example.com/forwarded"},
            },
            headers=headers,
        )
        assert answer.status == 200, await answer.text()

    async def dead_everywhere() -> bool:
        status = await (await gateway.get("/admin/forwarding", headers=ROOT)).json()
        return all(
            status["targets"].get(n, {}).get("dead_letters") for n in ("archive", "physics-copy")
        )

    await eventually(dead_everywhere, within=20, what="a dead letter at each target")
    status = await (await gateway.get("/admin/forwarding", headers=PHYS)).json()
    assert set(status["targets"]) == {"physics-copy"}
    assert (await gateway.post("/admin/forwarding/archive/replay", headers=PHYS)).status == 404
    replayed = await gateway.post("/admin/forwarding/physics-copy/replay", headers=PHYS)
    assert replayed.status == 200
    assert (await replayed.json())["requeued"] == 1
    assert (await gateway.post("/admin/forwarding/archive/replay", headers=ROOT)).status == 200


async def test_a_tenants_admin_lifts_its_own_credentials_lockouts_only(gateway: Client) -> None:
    path = "/admin/lockout/clear"
    own = await gateway.post(path, json={"username": "prof"}, headers=PHYS)
    assert own.status == 200, await own.text()
    other = await gateway.post(path, json={"username": "lms"}, headers=PHYS)
    assert other.status == 404  # as if there were no such user
    address = await gateway.post(path, json={"address": "10.0.0.1"}, headers=PHYS)
    assert address.status == 403
    assert (await gateway.post(path, json={"address": "10.0.0.1"}, headers=ROOT)).status == 200


async def test_rusticis_and_sql_lrss_apis_stay_within_the_tenant(gateway: Client) -> None:
    physics = {"engineTenantName": "physics"}
    put = await gateway.put(
        "/admin/xapi/credentials",
        json={"id": "engine-physics", "name": "engine", "secret": "a-long-enough-secret"},
        headers={**ROOT, **physics},
    )
    assert put.status == 200, await put.text()
    put = await gateway.put(
        "/admin/xapi/credentials",
        json={"id": "engine-default", "name": "engine", "secret": "a-long-enough-secret"},
        headers=ROOT,
    )
    assert put.status == 200
    by_id = {
        c["username"]: c["tenant"]
        for c in (await (await gateway.get("/admin/credentials", headers=ROOT)).json())[
            "credentials"
        ]
    }
    assert (by_id["engine-physics"], by_id["engine-default"]) == ("physics", None)

    async def engine_ids(headers: dict[str, str]) -> set[str]:
        answer = await gateway.get("/admin/xapi/credentials", headers=headers)
        assert answer.status == 200, await answer.text()
        return {c["id"] for c in (await answer.json())["xapiCredentials"]}

    assert await engine_ids(PHYS) == {"engine-physics"}
    assert await engine_ids({**ROOT, **physics}) == {"engine-physics"}
    assert {"engine-physics", "engine-default"} <= await engine_ids(ROOT)
    assert "engine-physics" not in await engine_ids({**ROOT, "engineTenantName": "default"})
    denied = await gateway.get(
        "/admin/xapi/credentials", headers={**PHYS, "engineTenantName": "default"}
    )
    assert denied.status == 403
    assert (await gateway.get("/admin/xapi/credentials/engine-default", headers=PHYS)).status == 404
    assert (
        await gateway.delete("/admin/xapi/credentials/engine-default", headers=PHYS)
    ).status == 404
    # Updating another tenant's id is creating it: the username is taken (409), unchanged.
    taken = await gateway.put(
        "/admin/xapi/credentials", json={"id": "engine-default", "name": "mine now"}, headers=PHYS
    )
    assert taken.status == 409

    made = await gateway.post("/admin/creds", json={"scopes": ["all"]}, headers=PHYS)
    assert made.status == 200, await made.text()
    pair = await made.json()
    listed = await (await gateway.get("/admin/creds", headers=PHYS)).json()
    assert pair["api-key"] in {p["api-key"] for p in listed}
    assert "engine-default" not in {p["api-key"] for p in listed}
    theirs = await gateway.post("/admin/creds", json={"scopes": ["all"]}, headers=ROOT)
    other_pair = await theirs.json()
    stolen = await gateway.delete("/admin/creds", json=other_pair, headers=PHYS)
    assert stolen.status == 404
    mine = await (await gateway.get("/admin/credentials", headers=PHYS)).json()
    assert {c["tenant"] for c in mine["credentials"]} == {"physics"}
    assert pair["api-key"] in {c["username"] for c in mine["credentials"]}


async def test_the_web_admin_of_a_tenant_shows_and_changes_its_own(gateway: Client) -> None:
    theirs = await make(gateway, ROOT, name="default-only")
    mine = await make(gateway, ROOT, name="physics-only", tenant="physics")
    form = await gateway.get("/admin/login")
    token = form.cookies["lrs_gateway_login"].value
    csrf = CSRF.search(await form.text())
    assert csrf is not None
    logged = await gateway.post(
        "/admin/login",
        data={"csrf": csrf.group(1), "username": "physadmin", "password": "physadmin-password"},
        headers={"Cookie": f"lrs_gateway_login={token}"},
        allow_redirects=False,
    )
    assert logged.status == 303
    page = await (await gateway.get("/admin/ui/credentials")).text()
    assert "physics-only" in page
    assert "default-only" not in page
    assert 'id="bound-tenant"' in page
    session_csrf = CSRF.search(page)
    assert session_csrf is not None
    acted = await gateway.post(
        f"/admin/ui/credentials/{theirs['id']}/disable", data={"csrf": session_csrf.group(1)}
    )
    assert acted.status == 404  # "That credential is gone."
    assert (await (await gateway.get(f"/admin/credentials/{theirs['id']}", headers=ROOT)).json())[
        "enabled"
    ]
    created = await gateway.post(
        "/admin/ui/credentials",
        data={"csrf": session_csrf.group(1), "name": "made in the page", "scopes": "all"},
    )
    assert created.status == 200, await created.text()
    listed = await (await gateway.get("/admin/credentials?tenant=physics", headers=ROOT)).json()
    assert "made in the page" in {c["name"] for c in listed["credentials"]}
    forwarding = await (await gateway.get("/admin/ui/forwarding")).text()
    assert 'data-target="archive"' not in forwarding
    del mine


async def test_request_and_statement_metrics_carry_the_tenant(gateway: Client) -> None:
    statement = {
        "actor": {"mbox": "mailto:m@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/metrics"},
    }
    for user in ("prof", "prof", "lms"):
        answer = await gateway.post(
            "/xAPI/statements", json=statement, headers={**basic(user, f"{user}-password"), **XAPI}
        )
        assert answer.status == 200, await answer.text()
    await gateway.get("/xAPI/statements", headers={**basic("prof", "wrong"), **XAPI})
    text = await (await gateway.get("/metrics")).text()
    accepted: dict[str, float] = {}
    posts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lrs_gateway_statements_accepted_total":
                accepted[sample.labels["tenant"]] = sample.value
            if (
                sample.name == "lrs_gateway_requests_total"
                and sample.labels["route"] == "xapi.statements"
            ):
                key = f"{sample.labels['method']} {sample.labels['status_class']}"
                posts[f"{key} {sample.labels['tenant']}"] = sample.value
    assert accepted == {"physics": 2, "default": 1}
    assert posts["POST 2xx physics"] == 2
    assert posts["POST 2xx default"] == 1
    assert posts["GET 4xx "] == 1  # refused before anyone was known: no tenant
