"""Rate limits and lockouts shared by every replica through Redis (limits.shared_url).

Against the real Redis of the `redis` fixture: three `serve` processes lock a guessed
username out after max_failures in all, not per replica; when Redis stops, each process
counts alone (never a 500, never an open door for a username already locked), says so
once in its log and in its metrics, and goes back to Redis when it answers again.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from realparts.redis import RedisServer
from support import (
    FakeLRS,
    basic,
    credential,
    eventually,
    free_port,
    served_gateway,
    write_config,
)

from gateway.clock import SYSTEM_CLOCK, ManualClock
from gateway.config.settings import Config
from gateway.http.app import create_app
from gateway.store.shared_limits import SharedLimits

pytestmark = pytest.mark.redis

Client = TestClient[web.Request, web.Application]
USERS = [
    credential("admin", "admin-password", ["all", "admin"]),
    credential("lms", "lms-password", ["statements/write"]),
]
STATEMENT = {
    "actor": {"mbox": "mailto:learner@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course/limits"},
}
MAX_FAILURES = 5


FLOODER = {"X-Forwarded-For": "203.0.113.7"}
OPERATOR = {"X-Forwarded-For": "198.51.100.1"}


def limits_extra(redis: RedisServer, prefix: str, **more: Any) -> dict[str, Any]:
    return {
        "limits": {"shared_url": redis.url, "shared_key_prefix": prefix},
        "lockout": {"max_failures": MAX_FAILURES, "window": 60, "block": 60, "tarpit": 0},
        # Each test client says where it is (X-Forwarded-For from loopback is believed),
        # so one client's guesses do not lock the others' address out.
        "rate_limit": {"trusted_proxies": ["127.0.0.1/32"]},
        **more,
    }


async def gateway_with_redis(
    tmp_path: Path,
    redis: RedisServer,
    aiohttp_server: Any,
    aiohttp_client: Any,
    prefix: str,
    clock: ManualClock | None = None,
) -> tuple[Client, Config]:
    """One gateway in this process with its limits in `redis` under keys of its own."""
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config: Config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        limits_extra(redis, f"{prefix}-{uuid.uuid4().hex}:"),
    )
    app = create_app(config, registry=CollectorRegistry(), clock=clock or SYSTEM_CLOCK)
    client: Client = await aiohttp_client(app)
    return client, config


async def test_the_script_counts_a_bucket_and_a_lockout(redis: RedisServer) -> None:
    shared = SharedLimits(redis.url, prefix=f"t-{uuid.uuid4().hex}:")
    try:
        waits = [await shared.take("ip:1.2.3.4", 1.0, 3) for _ in range(4)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert 0.9 < waits[3] <= 1.0
        began = [await shared.failed("user:bob", 3, 60, 30) for _ in range(4)]
        assert began == [False, False, True, False]  # one lockout, extended by the 4th
        ((held, failures),) = await shared.blocked_for(["user:bob"])
        assert 29 < held <= 30
        assert failures is True  # the 4th, after the lockout began
        assert await shared.blocked_for(["user:alice"]) == [(0.0, False)]
        assert await shared.lift("user:bob") is True
        assert await shared.blocked_for(["user:bob"]) == [(0.0, False)]
        assert await shared.lift("user:bob") is False
        assert shared.up
        assert shared.fallbacks == 0
    finally:
        await shared.close()


async def test_a_flood_over_three_replicas_is_locked_out_after_max_failures_in_all(
    tmp_path: Path, redis: RedisServer, aiohttp_server: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    prefix = f"flood-{uuid.uuid4().hex}:"
    ports = [free_port() for _ in range(3)]
    for name, port in zip("abc", ports, strict=True):
        (tmp_path / name).mkdir()
        write_config(
            tmp_path / name,
            str(storage.make_url("/xAPI/")),
            USERS,
            limits_extra(redis, prefix, server={"port": port, "shutdown_timeout": 5}),
        )
    async with (
        served_gateway(tmp_path / "a", ports[0]) as a,
        served_gateway(tmp_path / "b", ports[1]) as b,
        served_gateway(tmp_path / "c", ports[2]) as c,
        aiohttp.ClientSession() as session,
    ):
        replicas = [a, b, c]
        statuses = []
        for guess in range(MAX_FAILURES + 3):  # round robin, as a load balancer would
            base = replicas[guess % 3].base
            async with session.post(
                f"{base}/xAPI/statements",
                json=STATEMENT,
                headers=basic("lms", f"guess-{guess}") | FLOODER,
            ) as answer:
                statuses.append(answer.status)
        # Per replica that would be up to 3 * MAX_FAILURES guesses; shared, MAX_FAILURES.
        assert statuses == [401] * MAX_FAILURES + [429] * 3
        # Even the right password waits out the lockout, on every replica.
        for replica in replicas:
            async with session.post(
                f"{replica.base}/xAPI/statements",
                json=STATEMENT,
                headers=basic("lms", "lms-password") | OPERATOR,
            ) as answer:
                assert answer.status == 429
        # Lifted through one replica, lifted for all.
        async with session.post(
            f"{b.base}/admin/lockout/clear",
            json={"username": "lms"},
            headers=basic("admin", "admin-password") | OPERATOR,
        ) as answer:
            assert answer.status == 200
            assert (await answer.json())["was_locked_out"] is True
        for replica in replicas:
            async with session.post(
                f"{replica.base}/xAPI/statements",
                json=STATEMENT,
                headers=basic("lms", "lms-password") | OPERATOR,
            ) as answer:
                assert answer.status == 200
    lockout_lines = [
        line for r in replicas for line in r.log().splitlines() if "lockout: username" in line
    ]
    assert len(lockout_lines) == 1  # one line for the one lockout, wherever it began
    assert all("Traceback" not in r.log() for r in replicas)


def samples(text: str) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("lrs_gateway_shared_limits")
    }


async def test_while_redis_is_down_each_process_counts_alone_and_locked_stays_locked(
    tmp_path: Path,
    redis: RedisServer,
    aiohttp_server: Any,
    aiohttp_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()  # Redis's pause after a failure passes when the test says
    client, config = await gateway_with_redis(
        tmp_path, redis, aiohttp_server, aiohttp_client, "down", clock
    )

    async def post(username: str, password: str) -> int:
        where = {"X-Forwarded-For": f"203.0.113.{len(username)}"}  # one address each
        answer = await client.post(
            "/xAPI/statements", json=STATEMENT, headers=basic(username, password) | where
        )
        return answer.status

    for guess in range(MAX_FAILURES):
        assert await post("lms", f"guess-{guess}") == 401
    assert await post("lms", "lms-password") == 429  # locked, learnt from Redis
    await asyncio.to_thread(redis.stop)
    try:
        # Locked before Redis went away: still locked (fail closed).
        assert await post("lms", "lms-password") == 429
        # Another username: counted in this process now, and locked at the same limit.
        for guess in range(MAX_FAILURES):
            assert await post("admin", f"guess-{guess}") == 401
        assert await post("admin", "admin-password") == 429
        figures = samples(await (await client.get("/metrics")).text())
        assert figures["lrs_gateway_shared_limits_up"] == 0
        assert figures["lrs_gateway_shared_limits_fallbacks_total"] > 0
        warnings = [r for r in caplog.records if "Redis did not answer" in r.getMessage()]
        assert len(warnings) == 1  # one line for the outage, not one per request
    finally:
        await asyncio.to_thread(redis.start)
    clock.advance(config.limits.shared_retry_interval)  # the pause is over: try Redis

    async def back() -> bool:  # its first answer after the restart may still be refused
        await post("lms", "any-password")
        figures = samples(await (await client.get("/metrics")).text())
        return figures["lrs_gateway_shared_limits_up"] == 1

    await eventually(back, within=5, what="Redis used again")
    assert any("Redis answers again" in r.getMessage() for r in caplog.records)


async def test_a_cached_basic_request_costs_one_round_trip_to_redis(
    tmp_path: Path,
    redis: RedisServer,
    aiohttp_server: Any,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Address, lockout and principal limits in one script; a success clears nothing."""
    client, _ = await gateway_with_redis(tmp_path, redis, aiohttp_server, aiohttp_client, "trips")
    trips = 0
    run = SharedLimits._run

    async def counted(self: SharedLimits, call: Any) -> Any:
        nonlocal trips
        trips += 1
        return await run(self, call)

    monkeypatch.setattr(SharedLimits, "_run", counted)
    lms = basic("lms", "lms-password") | FLOODER
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=lms)).status == 200
    trips = 0
    for _ in range(5):
        assert (await client.post("/xAPI/statements", json=STATEMENT, headers=lms)).status == 200
    assert trips == 5
    # A failure (admit, then a count per lockout key: username and address), then a
    # success (admit, then the clearing of the username's failures).
    wrong = basic("lms", "wrong") | FLOODER
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=wrong)).status == 401
    assert (await client.post("/xAPI/statements", json=STATEMENT, headers=lms)).status == 200
    assert trips == 5 + 3 + 2
