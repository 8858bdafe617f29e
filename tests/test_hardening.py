"""Abuse on loopback, bounded in count and time: rate limits, lockout, floods, limits."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support import XAPI, FakeLRS, basic, credential, eventually, write_config

from gateway.http.abuse_limits import FailureLockout, TokenBuckets, client_address
from gateway.http.app import create_app
from gateway.http.keys import PASSWORDS, TOKEN_SIGNER
from gateway.http.readiness import PROBE_REQUEST_ID

Client = TestClient[web.Request, web.Application]
ALICE = credential("alice", "alice-pw", ["all"])
BOB = credential("bob", "bob-pw", ["all"])


async def gateway(
    tmp_path: Path,
    aiohttp_server: Any,
    aiohttp_client: Any,
    script: Any = None,
    **sections: dict[str, Any],
) -> Client:
    storage: TestServer = await aiohttp_server(FakeLRS(script).app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), [ALICE, BOB], dict(sections))
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return client


def from_ip(ip: str, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "X-Forwarded-For": ip}


def test_client_address_believes_only_trusted_proxies() -> None:
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"
    assert client_address("10.0.0.2", "1.2.3.4", trusted) == "1.2.3.4"
    assert client_address("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.3", trusted) == "1.2.3.4"
    assert client_address("10.0.0.2", "10.0.0.5", trusted) == "10.0.0.5"
    assert client_address("10.0.0.2", "junk, 1.2.3.4", []) == "10.0.0.2"
    assert client_address(None, None, trusted) == "-"


def test_token_bucket_and_lockout_are_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=100)
    assert buckets.take("a") == 0 and buckets.take("a") == 0  # noqa: PT018
    assert 0 < buckets.take("a") <= 1.0
    for n in range(1000):
        buckets.take(f"k{n}")
    assert len(buckets) == 100
    lockout = FailureLockout(max_failures=3, window=60, block=30, max_keys=50)
    for _ in range(3):
        lockout.failed("u")
    assert 29 < lockout.blocked_for("u") <= 30
    lockout.succeeded("u")
    assert lockout.blocked_for("u") == 0
    for n in range(500):
        lockout.failed(f"k{n}")
    assert len(lockout) == 50


async def test_rate_limit_per_address_and_per_caller(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(
        tmp_path,
        aiohttp_server,
        aiohttp_client,
        rate_limit={
            "per_ip_rate": 1,
            "per_ip_burst": 3,
            "per_principal_rate": 1,
            "per_principal_burst": 2,
            "trusted_proxies": ["127.0.0.1/32"],
        },
    )
    statuses = [
        (await client.get("/__lbheartbeat__", headers=from_ip("1.1.1.1", {}))).status
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    response = await client.get("/__lbheartbeat__", headers=from_ip("1.1.1.1", {}))
    assert response.status == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert (await response.json())["error"] == "too_many_requests"
    assert (await client.get("/__lbheartbeat__", headers=from_ip("2.2.2.2", {}))).status == 200
    auth = basic("alice", "alice-pw")
    statuses = [
        (await client.get("/whoami", headers=from_ip(f"3.3.3.{n}", auth))).status for n in range(3)
    ]
    assert statuses == [200, 200, 429]  # the caller's own bucket, whatever the address


async def test_ten_thousand_wrong_passwords(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.http.abuse_guard")
    client = await gateway(
        tmp_path,
        aiohttp_server,
        aiohttp_client,
        rate_limit={"enabled": False, "trusted_proxies": ["127.0.0.1/32"]},
        lockout={"max_failures": 10, "block": 60, "tarpit": 0},
    )
    checker = client.app[PASSWORDS]
    assert (
        await client.get("/whoami", headers=from_ip("9.9.9.9", basic("bob", "bob-pw")))
    ).status == 200
    before = checker.checks
    started = time.monotonic()
    statuses: dict[int, int] = {}

    async def guess(n: int) -> None:
        response = await client.get(
            "/whoami", headers=from_ip("6.6.6.6", basic("alice", f"guess-{n}"))
        )
        statuses[response.status] = statuses.get(response.status, 0) + 1
        await response.release()

    for chunk in range(100):
        await asyncio.gather(*(guess(chunk * 100 + n) for n in range(100)))
    elapsed = time.monotonic() - started
    # the first few guesses reach bcrypt (they were in flight together); then 429, no bcrypt
    assert checker.checks - before <= 110
    assert statuses.get(429, 0) >= 9_890
    assert statuses.get(200, 0) == 0
    # The operator reads one line per lockout: the username's and the address's.
    lockouts = [r.getMessage() for r in caplog.records if "lockout:" in r.getMessage()]
    assert len(lockouts) == 2, lockouts
    assert any("username 'alice'" in line for line in lockouts)
    assert any("address '6.6.6.6'" in line for line in lockouts)
    assert not any("guess-" in line for line in caplog.text.splitlines())
    # bob, from elsewhere and cached, is unaffected; alice from elsewhere is locked (by name)
    response = await client.get("/whoami", headers=from_ip("9.9.9.9", basic("bob", "bob-pw")))
    assert response.status == 200
    response = await client.get("/whoami", headers=from_ip("8.8.8.8", basic("alice", "alice-pw")))
    assert response.status == 429
    # the flood's address stays locked for guesses, but bob's credentials, proven a moment
    # ago, still pass there (a shared address must not lock out its valid users)
    response = await client.get("/whoami", headers=from_ip("6.6.6.6", basic("bob", "bob-pw")))
    assert response.status == 200
    response = await client.get("/whoami", headers=from_ip("6.6.6.6", basic("bob", "guess")))
    assert response.status == 429
    print(
        f"10k wrong passwords: {elapsed:.2f} s, bcrypt runs {checker.checks - before}, "
        f"answers {statuses}"
    )


async def test_bcrypt_flood_is_refused_fast_and_cached_users_keep_working(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(
        tmp_path,
        aiohttp_server,
        aiohttp_client,
        rate_limit={"enabled": False},
        lockout={"enabled": False},
    )
    assert (await client.get("/whoami", headers=basic("bob", "bob-pw"))).status == 200
    flood = [client.get("/whoami", headers=basic(f"user{n}", "x")) for n in range(400)]
    pending = [asyncio.ensure_future(request) for request in flood]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    for _ in range(20):
        assert (await client.get("/whoami", headers=basic("bob", "bob-pw"))).status == 200
    cached_latency = (time.monotonic() - started) / 20
    answers = await asyncio.gather(*pending)
    codes = sorted({response.status for response in answers})
    assert set(codes) <= {401, 503}
    assert 503 in codes  # the bounded queue refused some at once
    assert all(r.headers.get("Retry-After") == "1" for r in answers if r.status == 503)
    assert cached_latency < 0.25, cached_latency


async def test_sizes_and_header_bombs(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(
        tmp_path,
        aiohttp_server,
        aiohttp_client,
        limits={"max_batch_statements": 3, "max_header_size": 2048},
    )
    auth = {**basic("alice", "alice-pw"), "Content-Type": "application/json"}
    statement = {
        "actor": {"mbox": "mailto:a@example.com"},
        "verb": {"id": "http://x.org/v"},
        "object": {"id": "http://x.org/o"},
    }
    response = await client.post("/xAPI/statements", data=json.dumps([statement] * 4), headers=auth)
    assert response.status == 413
    response = await client.get("/whoami", headers={**auth, "X-Bomb": "x" * 5000})
    assert response.status in (400, 431)
    response = await client.get("/whoami", headers={**auth, **{f"X-H{n}": "v" for n in range(150)}})
    assert response.status in (400, 431)
    assert (await client.get("/whoami", headers=auth)).status == 200  # still serving


async def test_upstream_stack_traces_stay_in_the_log(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=500, text="Traceback: File /srv/lrs/internal-db-7.corp:5432")

    client = await gateway(tmp_path, aiohttp_server, aiohttp_client, script=crash)
    caplog.set_level(logging.WARNING)
    state = (
        "/xAPI/activities/state?activityId=http%3A%2F%2Fx.org%2Fa&stateId=s&agent="
        "%7B%22mbox%22%3A%22mailto%3Aa%40example.com%22%7D"
    )
    for method, path in (("GET", "/xAPI/statements"), ("PUT", state), ("POST", "/xAPI/statements")):
        response = await client.request(
            method,
            path,
            json={
                "actor": {"mbox": "mailto:a@example.com"},
                "verb": {"id": "http://x.org/v"},
                "object": {"id": "http://x.org/o"},
            },
            headers=basic("alice", "alice-pw"),
        )
        assert response.status == 500
        body = await response.json()
        assert body["error"] == "upstream_error"
        assert "internal-db-7" not in json.dumps(body)
        assert body["request_id"] in caplog.text
    assert "internal-db-7.corp" in caplog.text


async def test_storage_saturation_is_a_clean_503(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    release = asyncio.Event()

    async def held(request: web.Request, body: bytes) -> web.StreamResponse:
        # The gateway's own calls (readiness probe, about) answer at once; the clients'
        # requests hold both connections until the test has seen the others refused.
        if (
            not request.path.endswith("/about")
            and request.headers.get("X-Request-ID") != PROBE_REQUEST_ID
        ):
            await release.wait()
        return web.json_response({"statements": [], "more": ""})

    client = await gateway(
        tmp_path,
        aiohttp_server,
        aiohttp_client,
        script=held,
        storage={"max_connections": 2},
        limits={"upstream_queue_timeout": 0.2},
    )
    requests = [
        asyncio.ensure_future(client.get("/xAPI/statements", headers=basic("alice", "alice-pw")))
        for _ in range(5)
    ]
    await eventually(
        lambda: sum(r.done() for r in requests) == 3, within=5, what="three requests refused"
    )
    release.set()
    answers = await asyncio.gather(*requests)
    assert sorted(r.status for r in answers) == [200, 200, 503, 503, 503]


async def test_slow_and_idle_connections_do_not_hold_the_server(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(
        tmp_path, aiohttp_server, aiohttp_client, limits={"keepalive_timeout": 0.5}
    )
    host, port = client.server.host, client.server.port
    assert isinstance(port, int)
    # a slowloris: 50 connections trickling header bytes
    loop = asyncio.get_running_loop()
    sockets = []
    for _ in range(50):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, b"GET /whoami HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    try:
        for _ in range(5):
            for sock in sockets:
                await loop.sock_sendall(sock, b"X-a: b\r\n")
            started = time.monotonic()
            response = await client.get("/whoami", headers=basic("alice", "alice-pw"))
            assert response.status == 200
            assert time.monotonic() - started < 1.0
    finally:
        for sock in sockets:
            sock.close()
    # an idle keep-alive connection is closed after keepalive_timeout
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /__lbheartbeat__ HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    rest = await asyncio.wait_for(reader.read(), timeout=3)  # EOF: the server closed it
    assert rest.endswith(b"}") or rest == b""
    writer.close()


def test_xapi_helper_is_used() -> None:
    assert XAPI["X-Experience-API-Version"] == "1.0.3"


async def test_locked_out_guesses_wait_in_a_tarpit(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    client = await gateway(
        tmp_path, aiohttp_server, aiohttp_client, lockout={"max_failures": 2, "tarpit": 0.5}
    )
    for _ in range(2):
        assert (await client.get("/whoami", headers=basic("alice", "nope"))).status == 401
    started = time.monotonic()
    assert (await client.get("/whoami", headers=basic("alice", "nope"))).status == 429
    assert time.monotonic() - started >= 0.5


async def test_a_verified_bearer_token_is_not_verified_again(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    secret = "a-token-signing-secret-of-32-bytes-or-more"
    client = await gateway(
        tmp_path,
        aiohttp_server,
        aiohttp_client,
        auth={"backends": ["basic", "token"], "tokens": {"secret": secret}},
    )
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "lrs-gateway",
            "aud": "lrs-gateway",
            "sub": "alice",
            "iat": now,
            "exp": now + 60,
            "scope": "all",
            "agent": ALICE["agent"],
        },
        secret,
        algorithm="HS256",
    )
    for _ in range(5):
        response = await client.get("/whoami", headers={"Authorization": f"Bearer {token}", **XAPI})
        assert response.status == 200
    assert client.app[TOKEN_SIGNER].verifications == 1
    expired = jwt.encode(
        {
            "iss": "lrs-gateway",
            "aud": "lrs-gateway",
            "sub": "alice",
            "iat": now - 120,
            "exp": now - 60,
            "scope": "all",
            "agent": ALICE["agent"],
        },
        secret,
        algorithm="HS256",
    )
    for _ in range(2):  # failures are never cached
        response = await client.get(
            "/whoami", headers={"Authorization": f"Bearer {expired}", **XAPI}
        )
        assert response.status == 401
    assert client.app[TOKEN_SIGNER].verifications == 3
