"""Finding 6: storage gets the gateway's own forwarding headers, never a client's.

Client-sent forwarding and identity headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
`X-Remote-User`, ...) are dropped on every path to storage: statement writes (the lean
client), statement reads and the document passthrough (the session).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from support import FakeLRS, Recorded, basic, credential, write_config

from gateway.http.app import create_app
from gateway.upstream.storage import is_client_asserted, request_headers

ALICE = credential("alice", "alice-pw", ["all"])
Client = TestClient[web.Request, web.Application]
MakeGateway = Callable[..., Awaitable[tuple[Client, FakeLRS]]]

# What a client may send hoping storage (or a proxy before it) believes it.
SPOOFED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/admin",
    "Forwarded": "for=6.6.6.6;host=evil.example;proto=https",
    "X-Real-IP": "6.6.6.6",
    "X-Client-IP": "6.6.6.6",
    "True-Client-IP": "6.6.6.6",
    "CF-Connecting-IP": "6.6.6.6",
    "X-Remote-User": "admin",
    "Remote-User": "admin",
    "X-Auth-User": "admin",
    "X-Auth-Request-Email": "admin@example.org",
    "X-Forwarded-User": "admin",
    "X-Forwarded-Email": "admin@example.org",
    "X-Forwarded-Preferred-Username": "admin",
    "X-Forwarded-Access-Token": "stolen",
    "X-User": "admin",
    "X-Authenticated-User": "admin",
    "X-Authenticated-Userid": "admin",
    "X-Consumer-Username": "admin",
    "X-Client-Cert": "-----BEGIN CERTIFICATE-----",
    "X-SSL-Client-DN": "CN=admin",
    "X-SSL-Client-Verify": "SUCCESS",
    "X-Original-URL": "/xAPI/admin",
    "X-Rewrite-URL": "/xAPI/admin",
    "X-HTTP-Method-Override": "DELETE",
    "X-MS-Client-Principal-Name": "admin",
    "X-Amzn-Oidc-Identity": "admin",
}
OURS = {"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}


@pytest.fixture
def make_gateway(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> MakeGateway:
    async def make(*, trusted_proxies: list[str] | None = None) -> tuple[Client, FakeLRS]:
        fake = FakeLRS()
        server: TestServer = await aiohttp_server(fake.app())
        config = write_config(
            tmp_path,
            str(server.make_url("/xAPI/")),
            [ALICE],
            {
                "storage": {"basic_username": "gw", "basic_password": "gw-secret"},
                "rate_limit": {"trusted_proxies": trusted_proxies or []},
            },
        )
        client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        return client, fake

    return make


def statement() -> dict[str, Any]:
    return {
        "actor": {"mbox": "mailto:learner@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
    }


STATE = (
    "/xAPI/activities/state?activityId=http%3A%2F%2Fexample.com%2Fcourse"
    "&agent=%7B%22mbox%22%3A%22mailto%3Alearner%40example.com%22%7D&stateId=s1"
)


async def send(client: Client, route: str, headers: dict[str, str]) -> None:
    """One request on `route`, through the path that route takes to storage."""
    sent = {**basic("alice", "alice-pw"), **headers}
    if route == "statements POST":  # the lean client (StorageClient.exchange)
        response = await client.post("/xAPI/statements", json=statement(), headers=sent)
    elif route == "statements PUT":
        response = await client.put(
            f"/xAPI/statements?statementId={uuid.uuid4()}", json=statement(), headers=sent
        )
    elif route == "statements GET":  # the session (StorageClient.request), answer rewritten
        response = await client.get("/xAPI/statements", headers=sent)
    else:  # the document passthrough, streamed
        response = await client.put(
            STATE, data=json.dumps({"at": 1}), headers={**sent, "Content-Type": "application/json"}
        )
    assert response.status < 300, await response.text()


ROUTES = ["statements POST", "statements PUT", "statements GET", "document PUT"]


def received(fake: FakeLRS) -> Recorded:
    (only,) = fake.seen
    return only


@pytest.mark.parametrize("route", ROUTES)
async def test_client_forwarding_and_identity_headers_never_reach_storage(
    make_gateway: MakeGateway, route: str
) -> None:
    client, fake = await make_gateway()
    await send(client, route, {**SPOOFED, "X-Custom": "kept"})
    headers = {name.lower(): value for name, value in received(fake).headers.items()}
    leaked = {name for name in SPOOFED if name.lower() in headers and name.lower() not in OURS}
    assert leaked == set()
    assert "6.6.6.6" not in json.dumps(headers)
    assert "evil.example" not in json.dumps(headers)
    assert headers.get("x-forwarded-proto") != "https"
    assert headers["x-custom"] == "kept"  # what is not an assertion still passes


@pytest.mark.parametrize("route", ROUTES)
async def test_storage_gets_the_gateways_own_forwarding_headers(
    make_gateway: MakeGateway, route: str
) -> None:
    client, fake = await make_gateway()
    await send(client, route, {"X-Forwarded-For": "6.6.6.6"})
    headers = CIMultiDict(received(fake).headers)
    # No trusted proxy: the peer itself is the client, whatever it wrote.
    assert headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert headers.getall("X-Forwarded-Proto") == ["http"]
    assert headers.getall("X-Forwarded-Host") == [f"127.0.0.1:{client.port}"]
    assert "Forwarded" not in headers


@pytest.mark.parametrize("route", ROUTES)
async def test_behind_a_trusted_proxy_storage_gets_the_client_it_names(
    make_gateway: MakeGateway, route: str
) -> None:
    client, fake = await make_gateway(trusted_proxies=["127.0.0.0/8"])
    # The proxy appended the address it saw; what the client wrote further left is not
    # believed.
    await send(client, route, {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    assert CIMultiDict(received(fake).headers).getall("X-Forwarded-For") == ["203.0.113.9"]


async def test_a_proxy_that_names_no_address_gives_no_forwarded_for(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway(trusted_proxies=["127.0.0.0/8"])
    await send(client, "document PUT", {"X-Forwarded-For": "unknown"})
    assert "X-Forwarded-For" not in CIMultiDict(received(fake).headers)


def test_the_drop_list_by_name_and_prefix() -> None:
    for name in SPOOFED:
        assert is_client_asserted(name.lower()), name
    for name in (
        "x-experience-api-version",
        "content-type",
        "if-match",
        "if-none-match",
        "accept",
        "accept-language",
        "x-request-id",
        "user-agent",
        "x-custom",
    ):
        assert not is_client_asserted(name), name


def test_request_headers_keeps_the_gateways_own() -> None:
    out = request_headers(
        CIMultiDict({**SPOOFED, "Accept": "application/json"}),
        extra={"X-Forwarded-For": "192.0.2.1", "X-Request-ID": "r1"},
    )
    assert dict(out) == {
        "Accept": "application/json",
        "X-Forwarded-For": "192.0.2.1",
        "X-Request-ID": "r1",
    }
