"""The web admin at /admin/: login, sessions, CSRF, credentials pages; and in a real browser."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from realparts.chromium import Chromium
from support import (
    FakeLRS,
    FakeTarget,
    basic,
    credential,
    eventually,
    refusing_target,
    write_config,
)

from gateway.clock import ManualClock
from gateway.config.settings import Config
from gateway.forwarding.forwarder import OUTBOX_FILE
from gateway.forwarding.store import BACKFILL_STALE, OutboxStore
from gateway.http.admin_ui.activity import Activity, polyline
from gateway.http.app import create_app
from gateway.http.keys import ACTIVITY, CREDENTIAL_SOURCES

Client = TestClient[web.Request, web.Application]
USERS = [
    credential("admin", "admin-password", ["all", "admin"]),
    credential("lms", "lms-password", ["statements/write"]),
]
STATEMENT = {
    "actor": {"mbox": "mailto:learner@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course/1"},
}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def config(tmp_path: Path, aiohttp_server: Any) -> Config:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    # Plain http in tests: the default (Secure cookies) is checked on its own below.
    return write_config(
        tmp_path, str(storage.make_url("/xAPI/")), USERS, {"admin_ui": {"secure_cookie": False}}
    )


@pytest.fixture
async def client(config: Config, aiohttp_client: Any) -> Client:
    made: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    return made


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found is not None, page
    return found.group(1)


async def log_in(
    client: Client,
    username: str = "admin",
    password: str = "admin-password",  # noqa: S107
) -> aiohttp.ClientResponse:
    form = await client.get("/admin/login")
    # Sent by hand: a Secure cookie (the default) never comes back over plain http.
    token = form.cookies["lrs_gateway_login"].value
    return await client.post(
        "/admin/login",
        data={"csrf": csrf_of(await form.text()), "username": username, "password": password},
        headers={"Cookie": f"lrs_gateway_login={token}"},
        allow_redirects=False,
    )


async def credentials_page(client: Client) -> str:
    answer = await client.get("/admin/ui/credentials", allow_redirects=False)
    assert answer.status == 200, answer.status
    return await answer.text()


async def test_without_a_session_every_page_leads_to_the_login(client: Client) -> None:
    for path in ("/admin/", "/admin/ui/credentials"):
        answer = await client.get(path, allow_redirects=False)
        assert (answer.status, answer.headers["Location"]) == (303, "/admin/login")
    answer = await client.post("/admin/ui/credentials", data={"name": "x"}, allow_redirects=False)
    assert answer.status == 303


async def test_an_admin_logs_in_and_the_cookie_is_locked_down(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(tmp_path, str(storage.make_url("/xAPI/")), USERS)  # the defaults
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    answer = await log_in(client)
    assert (answer.status, answer.headers["Location"]) == (303, "/admin/ui/overview")
    cookie = next(c for c in answer.headers.getall("Set-Cookie") if "lrs_gateway_admin=" in c)
    for flag in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/admin"):
        assert flag in cookie, cookie
    assert "admin-password" not in cookie


async def test_pages_forbid_framing_scripts_from_elsewhere_and_caching(client: Client) -> None:
    answer = await client.get("/admin/login")
    policy = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'nonce-" in policy
    assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("username", "password", "status", "said"),
    [
        ("admin", "wrong-password", 401, "unknown user or wrong password"),
        ("lms", "lms-password", 403, "does not hold the admin scope"),
    ],
)
async def test_a_wrong_password_or_a_non_admin_does_not_get_in(
    client: Client, username: str, password: str, status: int, said: str
) -> None:
    answer = await log_in(client, username, password)
    assert answer.status == status
    assert said in await answer.text()
    assert "lrs_gateway_admin" not in answer.cookies
    assert (await client.get("/admin/ui/credentials", allow_redirects=False)).status == 303


async def test_a_login_without_the_forms_token_is_403(client: Client) -> None:
    answer = await client.post(
        "/admin/login", data={"username": "admin", "password": "admin-password"}
    )
    assert answer.status == 403
    assert "expired" in await answer.text()


async def test_failed_logins_count_toward_the_lockout(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        {"admin_ui": {"secure_cookie": False}, "lockout": {"max_failures": 3, "tarpit": 0.01}},
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    statuses = [(await log_in(client, "admin", "wrong-password")).status for _ in range(4)]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3] == 429
    # The Basic API sees the same lockout: it is one account.
    answer = await client.get("/xAPI/statements", headers=basic("admin", "admin-password"))
    assert answer.status == 429


async def test_state_changes_need_the_sessions_csrf_token(client: Client) -> None:
    await log_in(client)
    page = await credentials_page(client)
    refused = await client.post(
        "/admin/ui/credentials", data={"name": "x", "scopes": "all"}, allow_redirects=False
    )
    assert refused.status == 403
    forged = await client.post(
        "/admin/ui/credentials",
        data={"csrf": "forged", "name": "x", "scopes": "all"},
        allow_redirects=False,
    )
    assert forged.status == 403
    made = await client.post(
        "/admin/ui/credentials", data={"csrf": csrf_of(page), "name": "x", "scopes": "all"}
    )
    assert made.status == 200
    assert "shown this once" in await made.text()


async def test_names_are_shown_escaped(client: Client) -> None:
    await log_in(client)
    page = await credentials_page(client)
    name = "<script>alert(1)</script>"
    made = await client.post(
        "/admin/ui/credentials", data={"csrf": csrf_of(page), "name": name, "scopes": "all"}
    )
    text = await made.text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert name not in text


async def test_an_idle_session_expires(config: Config, aiohttp_client: Any) -> None:
    clock = ManualClock()
    client: Client = await aiohttp_client(
        create_app(config, registry=CollectorRegistry(), clock=clock)
    )
    await log_in(client)
    await credentials_page(client)
    clock.advance(config.admin_ui.idle_timeout - 1)
    await credentials_page(client)  # a page renews the session
    clock.advance(config.admin_ui.idle_timeout + 1)
    answer = await client.get("/admin/ui/credentials", allow_redirects=False)
    assert (answer.status, answer.headers["Location"]) == (303, "/admin/login")


async def test_an_admin_who_loses_the_admin_scope_is_out_at_once(
    client: Client, config: Config
) -> None:
    await log_in(client)
    await credentials_page(client)
    demoted = [credential("admin", "admin-password", ["all"]), USERS[1]]
    (Path(config.base_dir) / "auth.json").write_text(json.dumps(demoted))
    await client.app[CREDENTIAL_SOURCES].file.check_for_change()
    answer = await client.get("/admin/ui/credentials", allow_redirects=False)
    assert answer.status == 303


async def test_logout_ends_the_session(client: Client) -> None:
    await log_in(client)
    page = await credentials_page(client)
    answer = await client.post("/admin/logout", data={"csrf": csrf_of(page)}, allow_redirects=False)
    assert answer.status == 303
    assert (await client.get("/admin/ui/credentials", allow_redirects=False)).status == 303


# -- in a real browser ---------------------------------------------------------------------


async def browser_log_in(chromium: Chromium, base: str, *, screenshot: bool = False) -> None:
    """Through the login form as `admin`, on to the overview."""
    await chromium.open(f"{base}/admin/")
    if screenshot:
        await chromium.screenshot("admin login")
    await chromium.fill("input[name=username]", "admin")
    await chromium.fill("input[name=password]", "admin-password")
    await chromium.click("#login")
    await chromium.wait_for_text("h1", "Overview")


@pytest.mark.chromium
async def test_in_a_browser_an_admin_creates_a_credential_then_disables_it(
    config: Config, aiohttp_server: Any, chromium: Chromium
) -> None:
    """Log in, create a credential, use it from here (200), disable it in the page, 401."""
    server: TestServer = await aiohttp_server(create_app(config, registry=CollectorRegistry()))
    base = str(server.make_url("")).rstrip("/")
    await chromium.reset()
    await browser_log_in(chromium, base, screenshot=True)
    await chromium.screenshot("admin overview")
    await chromium.click("header a[href='/admin/ui/credentials']")
    await chromium.wait_for_text("h1", "Credentials")
    await chromium.fill("#create input[name=name]", "Moodle <prod>")
    await chromium.fill("#create input[name=scopes]", "statements/write")
    await chromium.click("#create-button")
    username = await chromium.text("#shown-username")
    secret = await chromium.text("#shown-secret")
    await chromium.screenshot("admin credential created")
    assert "Moodle <prod>" in await chromium.body_text()

    async with aiohttp.ClientSession() as session:

        async def post() -> int:
            async with session.post(
                f"{base}/xAPI/statements", json=STATEMENT, headers=basic(username, secret)
            ) as answer:
                return answer.status

        assert await post() == 200
        await chromium.click(f"tr[data-username='{username}'] button.disable")
        await chromium.wait_for_text(f"tr[data-username='{username}'] td.enabled", "no")
        await chromium.screenshot("admin credential disabled")
        assert await post() == 401
    await chromium.click("header a[href='/admin/ui/forwarding']")
    await chromium.wait_for_text("h1", "Forwarding")
    await chromium.screenshot("admin forwarding")


async def forwarding_config(tmp_path: Path, aiohttp_server: Any, target: FakeTarget) -> Config:
    """A gateway forwarding to `target` as `analytics`; one failed try makes a dead letter."""
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    target_server: TestServer = await aiohttp_server(target.app())
    return write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        {
            "admin_ui": {"secure_cookie": False},
            "data_dir": "data",
            "forwardings": [
                {
                    "name": "analytics",
                    "is_active": True,
                    "url": str(target_server.make_url("/xAPI/statements")),
                    "max_retries": 1,
                    "timeout": 5,
                }
            ],
        },
    )


@pytest.mark.chromium
async def test_in_a_browser_send_again_delivers_the_dead_letters(
    tmp_path: Path, aiohttp_server: Any, chromium: Chromium
) -> None:
    target, accept = refusing_target()
    config = await forwarding_config(tmp_path, aiohttp_server, target)
    server: TestServer = await aiohttp_server(create_app(config, registry=CollectorRegistry()))
    base = str(server.make_url("")).rstrip("/")
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        for n in range(3):
            statement = {**STATEMENT, "actor": {"mbox": f"mailto:learner{n}@example.com"}}
            async with session.post(
                f"{base}/xAPI/statements", json=statement, headers=basic("lms", "lms-password")
            ) as answer:
                ids += await answer.json()
    await chromium.reset()
    await browser_log_in(chromium, base)

    async def three_dead() -> bool:
        await chromium.open(f"{base}/admin/ui/forwarding")
        return (await chromium.text("tr[data-target='analytics'] td.dead")).startswith("3")

    await eventually(three_dead, within=10, what="three dead letters on the page")
    await chromium.screenshot("admin forwarding with dead letters")
    accept()
    await chromium.click("tr[data-target='analytics'] button.replay")
    await chromium.wait_for_text("#notice", "3 dead letters of analytics are back in its queue")
    await eventually(lambda: set(target.stored) == set(ids), within=10, what="the deliveries")


async def test_the_send_again_button_replays_a_targets_dead_letters(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    target, accept = refusing_target()
    config = await forwarding_config(tmp_path, aiohttp_server, target)
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    answer = await client.post(
        "/xAPI/statements", json=STATEMENT, headers=basic("lms", "lms-password")
    )
    (statement_id,) = await answer.json()
    await log_in(client)

    async def dead_letter_shown() -> bool:
        page = await (await client.get("/admin/ui/forwarding")).text()
        return '<td class="dead">1' in page and 'class="replay"' in page

    await eventually(dead_letter_shown, within=10, what="the dead letter on the page")
    page = await (await client.get("/admin/ui/forwarding")).text()
    action = "/admin/ui/forwarding/analytics/replay"
    assert f'action="{action}"' in page
    forged = await client.post(action, data={"csrf": "forged"}, allow_redirects=False)
    assert forged.status == 403
    accept()
    replayed = await client.post(action, data={"csrf": csrf_of(page)}, allow_redirects=False)
    assert replayed.status == 200
    assert "1 dead letters of analytics are back in its queue" in await replayed.text()
    await eventually(lambda: statement_id in target.stored, within=10, what="the delivery")
    gone = await client.post("/admin/ui/forwarding/elsewhere/replay", data={"csrf": csrf_of(page)})
    assert gone.status == 404


@pytest.mark.chromium
async def test_in_a_browser_the_overview_draws_the_rates(
    tmp_path: Path, aiohttp_server: Any, chromium: Chromium
) -> None:
    """Ten intervals of traffic (the clock advanced by hand) draw three lines in the chart."""
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,  # wrong passwords on purpose: no lockout, so they stay 401s
        {"admin_ui": {"secure_cookie": False}, "lockout": {"enabled": False}},
    )
    clock = ManualClock()
    app = create_app(config, registry=CollectorRegistry(), clock=clock)
    server: TestServer = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    activity = app[ACTIVITY]
    async with aiohttp.ClientSession() as session:
        for interval in range(10):
            for n in range(interval % 4 + 2):
                password = "lms-password" if n % 3 else "wrong-password"
                async with session.post(
                    f"{base}/xAPI/statements", json=STATEMENT, headers=basic("lms", password)
                ) as answer:
                    assert answer.status in (200, 401)
            clock.advance(activity.interval)

            def sampled(intervals: int = interval + 1) -> bool:
                return len(activity.rates()) == intervals

            await eventually(sampled, what="a sample")
    await chromium.reset()
    await browser_log_in(chromium, base)
    width = await chromium.run(
        lambda driver: driver.execute_script(
            "return document.querySelector('#chart polyline').getBBox().width"
        )
    )
    assert width > 500  # the line spans the chart
    lines = await chromium.find_all("#chart polyline")
    assert len(lines) == 3
    await chromium.screenshot("admin overview with rates")


async def test_the_overview_tells_readiness_versions_and_credentials(client: Client) -> None:
    await log_in(client)
    answer = await client.get("/admin/ui/overview", allow_redirects=False)
    text = await answer.text()
    assert answer.status == 200
    assert 'id="ready"' in text
    assert "1.0.3" in text
    assert "2 in the file, 0 in the database" in text


async def test_the_overview_charts_request_error_and_login_rates(
    config: Config, aiohttp_client: Any
) -> None:
    clock = ManualClock()
    app = create_app(config, registry=CollectorRegistry(), clock=clock)
    client: Client = await aiohttp_client(app)
    activity = app[ACTIVITY]
    await log_in(client)
    page = await (await client.get("/admin/ui/overview")).text()
    assert 'id="no-activity"' in page  # one sample is no rate yet
    for _ in range(4):
        answer = await client.post(
            "/xAPI/statements", json=STATEMENT, headers=basic("lms", "wrong-password")
        )
        assert answer.status == 401
    clock.advance(activity.interval)
    await eventually(lambda: len(activity.rates()) == 1, what="the second sample")
    page = await (await client.get("/admin/ui/overview")).text()
    assert '<td id="rate-auth-refused">0.40</td>' in page  # 4 in 10 s
    client_errors = re.search(r'<td id="rate-client-errors">([0-9.]+)</td>', page)
    assert client_errors is not None
    assert float(client_errors.group(1)) >= 0.4
    assert '<svg id="chart"' in page


def test_activity_rates_are_per_second_and_a_counter_reset_is_no_negative_rate() -> None:
    clock = ManualClock()
    totals = iter([{"requests": 10.0}, {"requests": 30.0}, {"requests": 5.0}])

    async def read() -> dict[str, float]:
        return next(totals)

    activity = Activity(read, clock=clock, interval=10.0)

    async def three_samples() -> list[float]:
        for _ in range(3):
            await activity.sample()
            clock.advance(10)
        return [r.per_second["requests"] for r in activity.rates()]

    assert asyncio.run(three_samples()) == [2.0, 0.0]
    assert (
        polyline([0.0, 5.0, 10.0], width=100, height=50, top=10) == "0.0,50.0 50.0,25.0 100.0,0.0"
    )
    assert polyline([], width=100, height=50, top=10) == ""


async def test_the_forwarding_page_shows_each_targets_figures(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    target = FakeTarget()
    target_server: TestServer = await aiohttp_server(target.app())
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        {
            "admin_ui": {"secure_cookie": False},
            "data_dir": "data",
            "forwardings": [
                {
                    "name": "analytics",
                    "is_active": True,
                    "url": str(target_server.make_url("/xAPI/statements")),
                    "max_retries": 3,
                    "timeout": 5,
                }
            ],
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    answer = await client.post(
        "/xAPI/statements", json=STATEMENT, headers=basic("lms", "lms-password")
    )
    assert answer.status == 200
    await log_in(client)

    async def delivered() -> bool:
        page = await (await client.get("/admin/ui/forwarding")).text()
        return '<td class="delivered">1</td>' in page and 'data-target="analytics"' in page

    await eventually(delivered, within=10, what="the delivery on the forwarding page")
    page = await (await client.get("/admin/ui/forwarding")).text()
    assert '<td class="backfilled">0</td>' in page
    assert 'id="backfills"' not in page  # no backfill: no table of them


def backfill_cells(page: str, target: str) -> dict[str, str]:
    """The cells of `target`'s row in the page's table of backfills, by class."""
    row = re.search(rf'<tr data-backfill="{target}">(.*?)</tr>', page, re.DOTALL)
    assert row is not None, page
    return dict(re.findall(r'<td class="backfill-(\w+)">([^<]*)</td>', row.group(1)))


async def test_the_forwarding_page_shows_each_targets_backfill(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    """Running, interrupted (no page for longer than BACKFILL_STALE) and done."""
    storage: TestServer = await aiohttp_server(FakeLRS().app())
    target = FakeTarget()
    target_server: TestServer = await aiohttp_server(target.app())
    url = str(target_server.make_url("/xAPI/statements"))
    names = ("analytics", "archive", "warehouse", "plain")
    config = write_config(
        tmp_path,
        str(storage.make_url("/xAPI/")),
        USERS,
        {
            "admin_ui": {"secure_cookie": False},
            "data_dir": "data",
            "forwardings": [
                {"name": name, "is_active": True, "url": url, "max_retries": 3, "timeout": 5}
                for name in names
            ],
        },
    )
    client: Client = await aiohttp_client(create_app(config, registry=CollectorRegistry()))
    # Another connection to the gateway's outbox, as the backfill command's would be.
    clock = ManualClock(start=time.time() - 2 * BACKFILL_STALE)
    store = OutboxStore(config.resolve_path(config.data_dir) / OUTBOX_FILE, clock=clock)
    since, until = "2024-01-01T00:00:00+00:00", "2024-01-11T00:00:00+00:00"

    def backfill(name: str, count: int, cursor: str, *, done: bool = False) -> None:
        holder = uuid.uuid4().hex
        claimed = store.claim_backfill(name, holder, since, until, stale_after=BACKFILL_STALE)
        items = []
        for _ in range(count):
            statement_id = str(uuid.uuid4())
            body = json.dumps({**STATEMENT, "id": statement_id}).encode()
            items.append((statement_id, body, None, None))
        progress = replace(claimed, cursor=cursor, first=since, queued=count, skipped=1)
        assert store.backfill_page(name, holder, items, progress)
        if done:
            assert store.finish_backfill(name, holder)

    try:
        backfill("archive", 4, "2024-01-06T00:00:00+00:00")  # then silent: interrupted
        clock.advance(2 * BACKFILL_STALE)
        backfill("analytics", 3, "2024-01-03T12:00:00+00:00")  # a quarter of the range
        backfill("warehouse", 2, until, done=True)
    finally:
        store.close()
    await log_in(client)
    page = await (await client.get("/admin/ui/forwarding")).text()
    assert backfill_cells(page, "analytics") == {
        "state": "running",
        "progress": "25 %",
        "queued": "3",
        "skipped": "1",
        "cursor": "2024-01-03T12:00:00+00:00",
    }
    archive = backfill_cells(page, "archive")
    assert (archive["state"], archive["progress"]) == ("interrupted (stale)", "50 %")
    warehouse = backfill_cells(page, "warehouse")
    assert (warehouse["state"], warehouse["progress"]) == ("done", "100 %")
    assert 'data-backfill="plain"' not in page
    targets = re.search(r'<table id="targets">(.*?)</table>', page, re.DOTALL)
    assert targets is not None
    backfilled = dict(
        re.findall(
            r'<tr data-target="(\w+)">.*?<td class="backfilled">(\d+)</td>',
            targets.group(1),
            re.DOTALL,
        )
    )
    assert backfilled == {"analytics": "3", "archive": "4", "warehouse": "2", "plain": "0"}
