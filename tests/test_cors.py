"""Finding 8: nothing unauthenticated goes to storage with the gateway's credential; CORS.

Without `server.cors` a preflight still goes to storage, but with no credential at all.
With it the gateway answers preflights itself and marks every answer to an allowed origin.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from realparts.ralph import RalphServer
from support import XAPI, FakeLRS, Script, basic, credential, write_config

from gateway.config.settings import CorsConfig
from gateway.http.app import create_app
from gateway.http.cors import CorsPolicy

ALICE = credential("alice", "alice-pw", ["all"])
LMS = "https://lms.example.org"
Client = TestClient[web.Request, web.Application]
MakeGateway = Callable[..., Awaitable[tuple[Client, FakeLRS]]]
STATE = (
    "/xAPI/activities/state?activityId=http%3A%2F%2Fexample.com%2Fcourse"
    "&agent=%7B%22mbox%22%3A%22mailto%3Alearner%40example.com%22%7D&stateId=s1"
)


def preflight(origin: str, method: str = "PUT") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,x-experience-api-version",
    }


@pytest.fixture
def make_gateway(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> MakeGateway:
    async def make(
        script: Script | None = None, cors: dict[str, Any] | None = None
    ) -> tuple[Client, FakeLRS]:
        fake = FakeLRS(script)
        server: TestServer = await aiohttp_server(fake.app())
        extra: dict[str, Any] = {"storage": {"basic_username": "gw", "basic_password": "gw-secret"}}
        if cors is not None:
            extra["server"] = {"cors": cors}
        config = write_config(tmp_path, str(server.make_url("/xAPI/")), [ALICE], extra)
        client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        return client, fake

    return make


async def lrs_cors(request: web.Request, body: bytes) -> web.StreamResponse:
    """An LRS with a CORS policy of its own (wide open), answering everything."""
    return web.json_response(
        {"statements": [], "more": ""},
        status=200,
        headers={"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "*"},
    )


def cors_headers(response: Any) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower().startswith("access-control-")
    }


# Without server.cors: preflights go to storage, never with the gateway's credential.


@pytest.mark.parametrize(
    "path", ["/xAPI/statements?statementId=x", STATE, "/xAPI/activities?activityId=x"]
)
async def test_without_cors_a_preflight_reaches_storage_without_any_credential(
    make_gateway: MakeGateway, path: str
) -> None:
    client, fake = await make_gateway()
    response = await client.options(
        path, headers={**preflight(LMS), "Authorization": "Basic Zm9yZ2VkOmZvcmdlZA=="}
    )
    assert response.status == 200
    (seen,) = fake.seen
    assert seen.method == "OPTIONS"
    assert "authorization" not in {name.lower() for name in seen.headers}
    assert "gw-secret" not in json.dumps(seen.headers)


async def test_authenticated_requests_still_carry_the_storage_credential(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway()
    response = await client.get(STATE, headers=basic("alice", "alice-pw"))
    assert response.status == 200
    assert fake.seen[0].headers["Authorization"].startswith("Basic ")


# With server.cors: the gateway answers.


async def test_a_preflight_from_an_allowed_origin_is_answered_by_the_gateway(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway(cors={"allow_origins": [LMS]})
    for path in ("/xAPI/statements?statementId=x", STATE):
        response = await client.options(path, headers=preflight(LMS))
        assert response.status == 204
        assert cors_headers(response) == {
            "Access-Control-Allow-Origin": LMS,
            "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, "
            "X-Experience-API-Version, If-Match, If-None-Match",
            "Access-Control-Max-Age": "600",
        }
        assert "Origin" in response.headers.getall("Vary")
    assert fake.seen == []


async def test_a_preflight_from_another_origin_is_403_and_never_sent(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway(cors={"allow_origins": [LMS]})
    response = await client.options(STATE, headers=preflight("https://evil.example"))
    assert response.status == 403
    body = await response.json()
    assert body["error"] == "forbidden"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert cors_headers(response) == {}
    assert fake.seen == []


async def test_answers_to_an_allowed_origin_carry_cors_headers_and_storages_are_dropped(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway(lrs_cors, cors={"allow_origins": [LMS]})
    for path in ("/xAPI/statements", STATE):
        response = await client.get(path, headers={**basic("alice", "alice-pw"), "Origin": LMS})
        assert response.status == 200
        assert cors_headers(response) == {
            "Access-Control-Allow-Origin": LMS,
            "Access-Control-Expose-Headers": "ETag, Last-Modified, "
            "X-Experience-API-Consistent-Through, "
            "X-Experience-API-Version",
        }
        assert "Origin" in response.headers.getall("Vary")
        response = await client.get(
            path, headers={**basic("alice", "alice-pw"), "Origin": "https://evil.example"}
        )
        assert response.status == 200
        assert cors_headers(response) == {}  # not even storage's wide-open `*`
    assert len(fake.seen) == 4


async def test_errors_to_an_allowed_origin_are_readable(make_gateway: MakeGateway) -> None:
    client, fake = await make_gateway(cors={"allow_origins": [LMS]})
    origin = {"Origin": LMS}
    unauthorized = await client.get("/xAPI/statements", headers={**XAPI, **origin})
    no_version = await client.get(
        "/xAPI/statements",
        headers={"Authorization": basic("alice", "alice-pw")["Authorization"], **origin},
    )
    bad_body = await client.post(
        "/xAPI/statements",
        data=b"{",
        headers={**basic("alice", "alice-pw"), **origin, "Content-Type": "application/json"},
    )
    for response, status in ((unauthorized, 401), (no_version, 400), (bad_body, 400)):
        assert response.status == status
        assert response.headers["Access-Control-Allow-Origin"] == LMS
        assert "error" in await response.json()
    assert fake.seen == []


async def test_a_streamed_answer_gets_them_too(make_gateway: MakeGateway) -> None:
    big = b"x" * (1024 * 1024)  # past the passthrough's buffer: streamed

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(body=big, content_type="application/octet-stream")

    client, _ = await make_gateway(script, cors={"allow_origins": [LMS]})
    response = await client.get(STATE, headers={**basic("alice", "alice-pw"), "Origin": LMS})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == LMS
    assert await response.read() == big


async def test_any_origin_and_credentials(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway(cors={"allow_origins": ["*"], "max_age": 60})
    response = await client.options(STATE, headers=preflight("https://anyone.example"))
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Max-Age"] == "60"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_policy_with_credentials_echoes_the_origin() -> None:
    policy = CorsPolicy(CorsConfig(allow_origins=(LMS,), allow_credentials=True, expose_headers=()))
    assert policy.allow_origin("HTTPS://LMS.example.org") == "HTTPS://LMS.example.org"
    assert policy.allow_origin("https://lms.example.org.evil.example") is None
    assert policy.allow_origin(None) is None
    assert policy.response_headers(LMS) == {
        "Access-Control-Allow-Origin": LMS,
        "Access-Control-Allow-Credentials": "true",
    }


async def test_a_plain_options_with_cors_on_still_goes_without_credential(
    make_gateway: MakeGateway,
) -> None:
    client, fake = await make_gateway(cors={"allow_origins": [LMS]})
    response = await client.options(STATE)  # no Origin: not a preflight
    assert response.status == 200
    assert "Authorization" not in CIMultiDict(fake.seen[0].headers)


# In front of a real Ralph.


@pytest.fixture
async def ralph_gateway(ralph: RalphServer, tmp_path: Path, aiohttp_client: Any) -> Client:
    config = write_config(
        tmp_path,
        ralph.url,
        [ALICE],
        {
            "storage": {"basic_username": ralph.username, "basic_password": ralph.password},
            "server": {"cors": {"allow_origins": [LMS]}},
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


@pytest.mark.ralph
async def test_cors_in_front_of_ralph(ralph_gateway: Client) -> None:
    response = await ralph_gateway.options(
        "/xAPI/statements?statementId=x", headers=preflight(LMS, "GET")
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == LMS
    assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, PUT, DELETE"
    assert "X-Experience-API-Version" in response.headers["Access-Control-Allow-Headers"]
    response = await ralph_gateway.get(
        "/xAPI/statements?limit=1", headers={**basic("alice", "alice-pw"), "Origin": LMS}
    )
    assert response.status == 200, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == LMS
    assert (
        "X-Experience-API-Consistent-Through" in response.headers["Access-Control-Expose-Headers"]
    )
    other = {**basic("alice", "alice-pw"), "Origin": "https://evil.example"}
    response = await ralph_gateway.get("/xAPI/statements?limit=1", headers=other)
    assert response.status == 200
    assert cors_headers(response) == {}
    response = await ralph_gateway.options(
        "/xAPI/statements", headers=preflight("https://evil.example")
    )
    assert response.status == 403
    assert cors_headers(response) == {}
