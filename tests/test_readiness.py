"""Readiness tells the truth; storage refusing the gateway's credential is the operator's 502."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from realparts.ralph import RalphServer
from support import FakeLRS, basic, credential, write_config

from gateway.config.settings import Config
from gateway.errors import ConfigError
from gateway.http.app import create_app
from gateway.http.readiness import keep_checking
from gateway.upstream.storage import Occasionally

ALICE = credential("alice", "alice-pw", ["all"])
REFUSED = "the storage LRS refused the gateway's credential"
LOOKS_WRONG = "storage URL looks wrong (no xAPI here)"

Client = TestClient[web.Request, web.Application]
Script = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]
MakeGateway = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_gateway(tmp_path: Path, aiohttp_client: Any) -> MakeGateway:
    async def make(url: str, username: str, password: str, **sections: Any) -> Client:
        storage = {
            "basic_username": username,
            "basic_password": password,
            **sections.pop("storage", {}),
        }
        config = write_config(tmp_path, url, [ALICE], {"storage": storage, **sections})
        client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
        return client

    return make


@pytest.fixture
def fake_storage(aiohttp_server: Any) -> Callable[[Script], Awaitable[str]]:
    async def start(script: Script) -> str:
        server: TestServer = await aiohttp_server(FakeLRS(script).app())
        return str(server.make_url("/xAPI/"))

    return start


async def ready_gauge(client: Client) -> float:
    text = await (await client.get("/metrics")).text()
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lrs_gateway_ready"
    )


def error_lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.ERROR and needle in record.getMessage()
    ]


# Against a real Ralph


@pytest.mark.ralph
async def test_right_storage_config_is_ready(ralph: RalphServer, make_gateway: MakeGateway) -> None:
    client = await make_gateway(ralph.url, ralph.username, ralph.password)
    response = await client.get("/__heartbeat__")
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["status"] == "ok"
    assert body["checks"]["storage"] == "ok"
    assert body["forwarding"] == {"targets": {}}
    assert await ready_gauge(client) == 1


@pytest.mark.ralph
async def test_wrong_storage_password_is_not_ready_and_logged_once(
    ralph: RalphServer, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await make_gateway(ralph.url, ralph.username, "not-the-password")
    for _ in range(3):
        response = await client.get("/__heartbeat__")
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "unavailable"
        assert REFUSED in body["checks"]["storage"]
        assert repr(ralph.username) in body["checks"]["storage"]
    assert await ready_gauge(client) == 0
    (line,) = error_lines(caplog, REFUSED)  # once per change of state, not per probe
    assert repr(ralph.username) in line
    assert "not-the-password" not in caplog.text


@pytest.mark.ralph
async def test_storage_url_without_xapi_is_not_ready(
    ralph: RalphServer, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_gateway(ralph.root_url, ralph.username, ralph.password)
    response = await client.get("/__heartbeat__")
    assert response.status == 503
    assert LOOKS_WRONG in (await response.json())["checks"]["storage"]
    assert await ready_gauge(client) == 0
    assert len(error_lines(caplog, LOOKS_WRONG)) == 1


@pytest.mark.ralph
async def test_clients_get_502_when_storage_refuses_the_gateway(
    ralph: RalphServer, make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_gateway(ralph.url, ralph.username, "not-the-password")
    auth = basic("alice", "alice-pw")
    statement = {
        "actor": {"mbox": "mailto:a@example.com"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
        "object": {"id": "http://example.com/course"},
    }
    answers = [
        await client.get("/xAPI/statements?limit=1", headers=auth),
        await client.post("/xAPI/statements", json=statement, headers=auth),
        await client.head("/xAPI/statements", headers=auth),
    ]
    for response in answers:
        assert response.status == 502
        assert "WWW-Authenticate" not in response.headers
    for response in answers[:2]:
        body = await response.json()
        assert body["error"] == "storage_refused_credential"
        assert body["message"].startswith(REFUSED)
    # Rate-limited: one line for the three, naming the credential, never the password.
    (line,) = [line for line in error_lines(caplog, REFUSED) if "request" in line]
    assert repr(ralph.username) in line
    assert "not-the-password" not in caplog.text


# Against a scripted storage


async def test_the_probe_answers_within_its_own_timeout(
    fake_storage: Callable[[Script], Awaitable[str]], make_gateway: MakeGateway
) -> None:
    released = asyncio.Event()

    async def never(request: web.Request, body: bytes) -> web.StreamResponse:
        await released.wait()
        return web.json_response({"statements": [], "more": ""})

    url = await fake_storage(never)
    client = await make_gateway(
        url, "gw", "gw-secret", storage={"timeout": 60, "probe_timeout": 0.3}
    )
    try:
        started = time.monotonic()
        response = await client.get("/__heartbeat__")
        elapsed = time.monotonic() - started
        assert response.status == 503
        assert "storage.probe_timeout" in (await response.json())["checks"]["storage"]
        assert elapsed < 10  # far below storage.timeout (60 s)
    finally:
        released.set()


@pytest.mark.parametrize("status", [401, 403])
async def test_about_alone_proves_nothing_and_a_refusal_is_never_passed_on(
    status: int,
    fake_storage: Callable[[Script], Awaitable[str]],
    make_gateway: MakeGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refusing(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path.endswith("/about"):
            return web.json_response({"version": ["1.0.3"]})
        return web.json_response(
            {"detail": "Invalid authentication credentials"},
            status=status,
            headers={"WWW-Authenticate": "Basic"},
        )

    client = await make_gateway(await fake_storage(refusing), "gw", "gw-secret")
    response = await client.get("/__heartbeat__")
    assert response.status == 503
    assert REFUSED in (await response.json())["checks"]["storage"]
    auth = basic("alice", "alice-pw")
    for path in (
        "/xAPI/statements",
        "/xAPI/activities/state?activityId=http%3A%2F%2Fx&"
        "agent=%7B%22mbox%22%3A%22mailto%3Aa%40example.com%22%7D&stateId=s",
    ):
        response = await client.get(path, headers=auth)
        assert response.status == 502
        assert "WWW-Authenticate" not in response.headers
        assert (await response.json())["message"].startswith(REFUSED)
    assert "gw-secret" not in caplog.text


async def test_an_unauthenticated_preflight_keeps_the_lrs_answer(
    fake_storage: Callable[[Script], Awaitable[str]], make_gateway: MakeGateway
) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        if "Authorization" not in request.headers:
            return web.Response(status=401, headers={"WWW-Authenticate": "Basic"})
        return web.json_response({"statements": [], "more": ""})

    client = await make_gateway(await fake_storage(script), "gw", "gw-secret")
    response = await client.options(
        "/xAPI/statements",
        headers={"Origin": "https://lms.example.org", "Access-Control-Request-Method": "GET"},
    )
    assert response.status == 401  # sent without the gateway's credential: not its refusal
    assert (await client.get("/__heartbeat__")).status == 200


async def test_each_change_of_state_is_logged_once(
    fake_storage: Callable[[Script], Awaitable[str]],
    make_gateway: MakeGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    answer = {"status": 401}

    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"statements": [], "more": ""}, status=answer["status"])

    client = await make_gateway(await fake_storage(script), "gw", "gw-secret")
    for _ in range(3):
        assert (await client.get("/__heartbeat__")).status == 503
    answer["status"] = 200
    for _ in range(2):
        assert (await client.get("/__heartbeat__")).status == 200
    assert await ready_gauge(client) == 1
    assert len(error_lines(caplog, REFUSED)) == 1
    assert len([r for r in caplog.records if "passes again" in r.getMessage()]) == 1


async def test_targets_are_reported_and_never_make_the_gateway_unready(
    fake_storage: Callable[[Script], Awaitable[str]],
    make_gateway: MakeGateway,
    unused_tcp_port: int,
) -> None:
    async def script(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"statements": [], "more": ""})

    down = {
        "name": "archive",
        "is_active": True,
        "max_retries": 1,
        "timeout": 1,
        "basic_username": "archive",
        "basic_password": "archive-secret",
        "url": f"http://127.0.0.1:{unused_tcp_port}/xAPI/statements",
    }
    client = await make_gateway(
        await fake_storage(script), "gw", "gw-secret", forwardings=[down], data_dir="data"
    )
    response = await client.get("/__heartbeat__")
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["checks"]["outbox"] == "ok"
    target = body["forwarding"]["targets"]["archive"]
    assert target["backlog"] == 0
    assert "oldest_age" in target


# Units


def test_occasionally_says_when_to_log_and_how_many_since() -> None:
    now = [100.0]
    limiter = Occasionally(60.0, clock=lambda: now[0])
    assert limiter.due() == 1
    assert [limiter.due() for _ in range(4)] == [None] * 4
    now[0] += 60
    assert limiter.due() == 5
    now[0] += 1
    assert limiter.due() is None


async def test_the_background_loop_logs_its_failures_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failed: list[None] = []
    sleeps: list[float] = []

    async def check() -> None:
        raise RuntimeError("boom")

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == 6:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await keep_checking(
            check,
            on_failure=lambda: failed.append(None),
            interval=15,
            failures=Occasionally(60.0, clock=lambda: now[0]),
            sleep=sleep,
        )
    assert len(failed) == 6
    lines = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split("(")[1].split(" ")[0] for r in lines] == ["1", "4"]
    assert all(r.exc_info is not None for r in lines)


def test_probe_timeout_is_a_setting(tmp_path: Path) -> None:
    config: Config = write_config(tmp_path, "http://lrs/xAPI/", [ALICE])
    assert config.storage.probe_timeout == 2.0
    config = write_config(
        tmp_path,
        "http://lrs/xAPI/",
        [ALICE],
        environ={"LRS_GATEWAY__STORAGE__PROBE_TIMEOUT": "0.5"},
    )
    assert config.storage.probe_timeout == 0.5
    with pytest.raises(ConfigError, match=r"storage\.probe_timeout"):
        write_config(tmp_path, "http://lrs/xAPI/", [ALICE], {"storage": {"probe_timeout": 0}})
