"""The Rustici-style auth callback (against a callback service) and gateway-issued tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import XAPI, FakeLRS, basic, credential, write_config

from gateway.clock import SYSTEM_CLOCK, Clock, ManualClock
from gateway.http.app import create_app

Client = TestClient[web.Request, web.Application]
SECRET = "a-token-signing-secret-of-32-bytes-or-more"


class CallbackService:
    """A small auth-callback service: answers by username from a table, records calls."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.answers.get(body["username"], {"verified": False, "permission": "NONE"})
        if isinstance(answer, web.StreamResponse):
            return answer
        if (
            isinstance(answer, dict)
            and answer.get("verified")
            and answer.get("password") not in (None, body["password"])
        ):
            return web.json_response({"verified": False, "permission": "NONE"})
        return web.json_response({k: v for k, v in answer.items() if k != "password"})


MakeGateway = Callable[..., Awaitable[tuple[Client, CallbackService]]]


@pytest.fixture
def make_gateway(tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any) -> MakeGateway:
    async def make(
        backends: list[str], clock: Clock = SYSTEM_CLOCK, **auth: Any
    ) -> tuple[Client, CallbackService]:
        service = CallbackService()
        callback_app = web.Application()
        callback_app.router.add_post("/verify", service.handle)
        callback: TestServer = await aiohttp_server(callback_app)
        storage: TestServer = await aiohttp_server(FakeLRS().app())
        settings: dict[str, Any] = {
            "backends": backends,
            "callback": {
                "url": str(callback.make_url("/verify")),
                "timeout": 0.5,
                "cache_seconds_failure": 0.3,
            },
            "tokens": {"secret": SECRET, "max_lifetime": 600},
        }
        for key, value in auth.items():
            settings.setdefault(key, {}).update(value)
        users = [
            credential("boss", "boss-pw", ["all", "admin"]),
            credential("tokener", "tokener-pw", ["statements/read", "tokens/issue"]),
            credential("plain", "plain-pw", ["all"]),
        ]
        config = write_config(tmp_path, str(storage.make_url("/xAPI/")), users, {"auth": settings})
        client: Client = await aiohttp_client(
            create_app(config, registry=CollectorRegistry(), clock=clock)
        )
        return client, service

    return make


async def test_callback_verifies_maps_permissions_and_caches(make_gateway: MakeGateway) -> None:
    clock = ManualClock()
    client, service = await make_gateway(["callback"], clock=clock)
    service.answers["ro"] = {"verified": True, "permission": "READONLY", "password": "pw"}
    service.answers["nobody"] = {"verified": True, "permission": "NONE", "password": "pw"}
    response = await client.get("/whoami", headers=basic("ro", "pw"))
    assert response.status == 200
    data = await response.json()
    assert data["scopes"] == ["all/read"]
    assert data["scheme"] == "callback"
    assert data["agent"]["account"]["name"] == "ro"
    assert service.calls[0]["password"] == "pw"
    assert service.calls[0]["authorizationHeader"] == basic("ro", "pw")["Authorization"]
    for _ in range(3):
        assert (await client.get("/whoami", headers=basic("ro", "pw"))).status == 200
    assert len(service.calls) == 1  # cached success
    assert (await client.post("/xAPI/statements", json={}, headers=basic("ro", "pw"))).status == 403
    assert (await client.get("/xAPI/statements", headers=basic("nobody", "pw"))).status == 403
    # failures are cached for cache_seconds_failure (0.3 s), then asked again
    for _ in range(3):
        assert (await client.get("/whoami", headers=basic("ro", "bad"))).status == 401
    calls = len(service.calls)
    clock.advance(0.3)
    assert (await client.get("/whoami", headers=basic("ro", "bad"))).status == 401
    assert len(service.calls) == calls + 1


async def test_callback_expiry_and_invalidate_entire_cache(make_gateway: MakeGateway) -> None:
    client, service = await make_gateway(["callback"])
    service.answers["short"] = {
        "verified": True,
        "permission": "ROOT",
        "password": "pw",
        "expireTimeInSeconds": 0,
    }
    service.answers["long"] = {"verified": True, "permission": "USER", "password": "pw"}
    for _ in range(2):
        await client.get("/whoami", headers=basic("short", "pw"))
    assert len(service.calls) == 2  # expireTimeInSeconds 0: not cached
    await client.get("/whoami", headers=basic("long", "pw"))
    await client.get("/whoami", headers=basic("long", "pw"))
    assert len(service.calls) == 3
    service.answers["flush"] = {
        "verified": True,
        "permission": "ROOT",
        "password": "pw",
        "invalidateEntireCache": True,
    }
    await client.get("/whoami", headers=basic("flush", "pw"))
    await client.get("/whoami", headers=basic("long", "pw"))
    assert len(service.calls) == 5  # long's cached success was dropped


@pytest.mark.parametrize(
    "answer",
    [
        web.Response(status=500, text="boom"),
        web.Response(text="<html>not json"),
        {"verified": "yes"},
        {"verified": True, "permission": "SUPERUSER"},
        {"verified": True, "permission": "ROOT", "expireTimeInSeconds": "soon"},
    ],
)
async def test_callback_trouble_is_503_not_401_and_not_cached(
    make_gateway: MakeGateway, answer: Any
) -> None:
    client, service = await make_gateway(["callback"])
    service.answers["u"] = answer
    for _ in range(2):
        response = await client.get("/xAPI/statements", headers=basic("u", "pw"))
        assert response.status == 503
        body = await response.json()
        assert body["error"] == "auth_unavailable"
        assert "pw" not in body["message"]
    assert len(service.calls) == 2


async def test_callback_timeout_is_503(make_gateway: MakeGateway) -> None:
    client, service = await make_gateway(["callback"])
    service.delay = 1.0
    response = await client.get("/whoami", headers=basic("u", "pw"))
    assert response.status == 503


async def test_file_first_then_callback(make_gateway: MakeGateway) -> None:
    client, service = await make_gateway(["basic", "callback"])
    assert (await client.get("/whoami", headers=basic("plain", "plain-pw"))).status == 200
    assert service.calls == []
    service.answers["lms"] = {"verified": True, "permission": "USER", "password": "pw"}
    response = await client.get("/whoami", headers=basic("lms", "pw"))
    assert (await response.json())["scheme"] == "callback"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **XAPI}


async def test_tokens_are_issued_narrowed_and_verified(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway(["basic", "token"])
    response = await client.post(
        "/token",
        json={"scopes": ["statements/read/mine"], "expires_in": 60},
        headers=basic("tokener", "tokener-pw"),
    )
    assert response.status == 200, await response.text()
    issued = await response.json()
    token = issued["token"]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="lrs-gateway")
    assert claims["exp"] - claims["iat"] == 60
    assert issued["expires_at"].endswith("Z")
    response = await client.get("/whoami", headers=bearer(token))
    data = await response.json()
    assert data == {
        "agent": {"mbox": "mailto:tokener@example.com"},
        "scopes": ["statements/read/mine"],
        "username": "tokener",
        "scheme": "token",
    }
    assert (await client.get("/xAPI/statements", headers=bearer(token))).status == 200
    assert (await client.post("/xAPI/statements", json={}, headers=bearer(token))).status == 403
    response = await client.get("/xAPI/statements", headers=basic("tokener", "x"))
    assert response.headers.getall("WWW-Authenticate") == [
        'Basic realm="xAPI", charset="UTF-8"',
        'Bearer realm="xAPI"',
    ]


async def test_token_lifetime_is_capped_and_expiry_accepted(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway(["basic", "token"])
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    response = await client.post(
        "/token", json={"scopes": ["all"], "expiry": expiry}, headers=basic("boss", "boss-pw")
    )
    claims = jwt.decode(
        (await response.json())["token"], SECRET, algorithms=["HS256"], audience="lrs-gateway"
    )
    assert claims["exp"] - claims["iat"] == 600


@pytest.mark.parametrize(
    ("user", "body", "status"),
    [
        ("tokener", {"scopes": ["statements/write"]}, 403),  # wider than the caller's
        ("tokener", {"scopes": ["all/read"]}, 403),
        ("tokener", {"scopes": ["admin"]}, 403),
        ("boss", {"scopes": ["no-such-scope"]}, 403),
        ("boss", {"scopes": []}, 403),
        ("plain", {"scopes": ["statements/read"]}, 403),  # `all` alone may not issue
        ("boss", {"scopes": "all"}, 400),
        ("boss", {"scopes": ["all"], "expires_in": -5}, 400),
        ("boss", {"scopes": ["all"], "expiry": "tomorrow"}, 400),
        ("boss", {"scopes": ["all"], "expiry": "2001-01-01T00:00:00Z"}, 400),
        ("boss", ["all"], 400),
    ],
)
async def test_bad_token_requests(
    make_gateway: MakeGateway, user: str, body: Any, status: int
) -> None:
    client, _ = await make_gateway(["basic", "token"])
    response = await client.post("/token", json=body, headers=basic(user, f"{user}-pw"))
    assert response.status == status


def forge(claims: dict[str, Any], key: str = SECRET, alg: str = "HS256") -> str:
    now = int(time.time())
    base = {
        "iss": "lrs-gateway",
        "aud": "lrs-gateway",
        "sub": "boss",
        "iat": now,
        "exp": now + 60,
        "scope": "all",
        "agent": {"mbox": "mailto:boss@example.com"},
        "via": "basic",
    }
    return jwt.encode({**base, **claims}, key, algorithm=alg)


def tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "all admin"
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{raw}.{signature}"


@pytest.mark.parametrize(
    "token",
    [
        forge({}, key="another-secret-that-is-long-enough-too"),  # rotated secret
        forge({"exp": int(time.time()) - 60}),  # expired
        forge({"exp": int(time.time()) + 86400}),  # outlives max_lifetime
        forge({"aud": "someone-else"}),
        forge({"agent": {"name": "no identifier"}}),
        tamper(forge({"scope": "statements/read"})),
        forge({"sub": "nobody"}),  # a user the credentials file does not hold
        forge({"agent": {"mbox": "mailto:someone-else@example.com"}}),  # not boss's agent
        forge({"via": "token"}),  # minted by a token
        jwt.encode({"iss": "lrs-gateway", "sub": "boss", "scope": "all"}, "", algorithm="none"),
        "not.a.jwt",
        "",
    ],
)
async def test_bad_gateway_tokens_are_401(make_gateway: MakeGateway, token: str) -> None:
    client, _ = await make_gateway(["basic", "token"])
    response = await client.get("/whoami", headers=bearer(token))
    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Bearer",
        "Bearer " + "x" * 4000,
        "Negotiate abc",
        "basic",
        ":::",
    ],
)
async def test_malformed_authorization_headers_are_401(
    make_gateway: MakeGateway, header: str
) -> None:
    client, _ = await make_gateway(["basic", "token"])
    response = await client.get("/whoami", headers={"Authorization": header})
    assert response.status == 401


async def test_a_token_never_mints_tokens_nor_carries_admin(make_gateway: MakeGateway) -> None:
    client, _ = await make_gateway(["basic", "token"])
    for user, scopes in (
        ("tokener", ["tokens/issue", "statements/read/mine"]),
        ("boss", ["admin"]),
        ("boss", ["all", "tokens/issue"]),
    ):
        response = await client.post(
            "/token", json={"scopes": scopes}, headers=basic(user, f"{user}-pw")
        )
        assert response.status == 403, (user, scopes)
        assert "never holds" in (await response.json())["message"]
    response = await client.post(
        "/token", json={"scopes": ["statements/read/mine"]}, headers=basic("tokener", "tokener-pw")
    )
    token = (await response.json())["token"]
    response = await client.post(
        "/token",
        json={"scopes": ["statements/read/mine"], "expires_in": 600},
        headers=bearer(token),
    )
    assert response.status == 403
    assert "cannot issue tokens" in (await response.json())["message"]
    # A token forged with the gateway's key but holding admin gets none of it.
    response = await client.get("/whoami", headers=bearer(forge({"scope": "all admin"})))
    assert (await response.json())["scopes"] == ["all"]


async def until_status(
    client: Client, token: str, wanted: int, scopes: list[str] | None = None
) -> dict[str, Any]:
    """/whoami with `token` until it answers `wanted` (and `scopes`): the file is re-read
    every 0.05 s."""
    deadline = time.monotonic() + 10
    while True:
        response = await client.get("/whoami", headers=bearer(token))
        if response.status == wanted:
            answer: dict[str, Any] = await response.json()
            if scopes is None or answer["scopes"] == scopes:
                return answer
        assert time.monotonic() < deadline, f"still {response.status}"
        await asyncio.sleep(0.02)


async def test_a_token_follows_its_user_in_the_credentials_file(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    client, _ = await make_gateway(["basic", "token"])
    response = await client.post(
        "/token", json={"scopes": ["all"]}, headers=basic("boss", "boss-pw")
    )
    token = (await response.json())["token"]
    assert (await until_status(client, token, 200))["scopes"] == ["all"]
    users = json.loads((tmp_path / "auth.json").read_text())
    for user in users:
        if user["username"] == "boss":
            user["scopes"] = ["statements/read"]  # demoted: the token shrinks with it
    (tmp_path / "auth.json").write_text(json.dumps(users))
    await until_status(client, token, 200, scopes=[])
    (tmp_path / "auth.json").write_text(
        json.dumps([u for u in users if u["username"] != "boss"])
    )  # removed: the token is refused
    answer = await until_status(client, token, 401)
    assert "no longer exists" in answer["message"]
