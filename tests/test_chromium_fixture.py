"""Tests of the `chromium` fixture: a real headless Chromium against pages served on loopback."""

from __future__ import annotations

import html
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from realparts import chromium as chromium_module
from realparts.chromium import CHROMEDRIVER, CHROMIUM, Chromium, run_chromium
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.selenium_manager import SeleniumManager

pytestmark = pytest.mark.chromium

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT_NAME = "<script>window.pwned = 1</script>"

FORM_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Form</title></head>
<body>
<h1>Add a credential</h1>
<form method="post" action="/submit">
  <label>Name <input id="name" name="name" type="text"></label>
  <button id="save" type="submit">Save</button>
</form>
</body></html>
"""

SCRIPT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Script</title></head>
<body>
<p id="status">waiting for the script</p>
<script>
  setTimeout(function () {
    document.getElementById("status").textContent = "changed by the script";
  }, 200);
</script>
</body></html>
"""


def _page(title: str, body: str) -> web.Response:
    return web.Response(
        text=f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body>{body}</body></html>",
        content_type="text/html",
    )


def _app(received: list[str]) -> web.Application:
    async def form(_request: web.Request) -> web.Response:
        return web.Response(text=FORM_PAGE, content_type="text/html")

    async def submit(request: web.Request) -> web.Response:
        name = str((await request.post())["name"])
        received.append(name)
        return _page("Saved", f'<p id="received">Received {html.escape(name)}</p>')

    async def script(_request: web.Request) -> web.Response:
        return web.Response(text=SCRIPT_PAGE, content_type="text/html")

    async def escaped(_request: web.Request) -> web.Response:
        return _page("Escaped", f'<p id="name">{html.escape(SCRIPT_NAME)}</p>')

    async def unescaped(_request: web.Request) -> web.Response:
        # The control: the same name NOT escaped is markup, and its script runs.
        return _page("Unescaped", f'<p id="name">{SCRIPT_NAME}</p><p id="end">end</p>')

    app = web.Application()
    app.router.add_get("/form", form)
    app.router.add_post("/submit", submit)
    app.router.add_get("/script", script)
    app.router.add_get("/escaped", escaped)
    app.router.add_get("/unescaped", unescaped)
    return app


@pytest.fixture
def received() -> list[str]:
    return []


@pytest.fixture
async def server(received: list[str], chromium: Chromium) -> AsyncIterator[TestServer]:
    await chromium.reset()
    test_server = TestServer(_app(received), host="127.0.0.1")
    async with test_server:
        yield test_server


def _url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def test_fill_and_submit_reaches_the_server(
    chromium: Chromium, server: TestServer, received: list[str]
) -> None:
    await chromium.open(_url(server, "/form"))
    assert await chromium.text("h1") == "Add a credential"
    await chromium.fill("#name", "Ada Lovelace")
    await chromium.click("#save")
    await chromium.wait_for_text("#received", "Received Ada Lovelace")
    assert received == ["Ada Lovelace"]
    assert await chromium.run(lambda driver: driver.current_url) == _url(server, "/submit")


async def test_script_changes_the_text(chromium: Chromium, server: TestServer) -> None:
    await chromium.open(_url(server, "/script"))
    await chromium.wait_for_text("#status", "changed by the script")
    assert await chromium.text("#status") == "changed by the script"


async def test_wait_times_out_with_its_message(chromium: Chromium, server: TestServer) -> None:
    await chromium.open(_url(server, "/form"))
    with pytest.raises(TimeoutException, match="never contained 'no such text'"):
        await chromium.wait_for_text("h1", "no such text", within=0.5)
    with pytest.raises(TimeoutException, match="no visible element matches '#absent'"):
        await chromium.find("#absent", within=0.5)


async def test_screenshot_is_a_png_in_the_artifacts_dir(
    chromium: Chromium, server: TestServer
) -> None:
    await chromium.open(_url(server, "/form"))
    path = await chromium.screenshot("form page/after load")
    assert path.parent == chromium.artifacts_dir
    assert path.name.startswith("chromium-")
    assert path.name.endswith("-form-page-after-load.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    # IHDR, the first chunk: the viewport's size (the window's width; less than its height).
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == chromium_module.WINDOW_SIZE[0]
    assert 0 < height <= chromium_module.WINDOW_SIZE[1]


async def test_escaped_script_name_shows_as_text(chromium: Chromium, server: TestServer) -> None:
    await chromium.open(_url(server, "/escaped"))
    assert SCRIPT_NAME in await chromium.body_text()
    assert await chromium.run(lambda driver: driver.execute_script("return window.pwned")) is None

    # The same check catches a page that does not escape: the script ran, no literal text.
    await chromium.open(_url(server, "/unescaped"))
    await chromium.find("#end")
    assert "<script>" not in await chromium.body_text()
    assert await chromium.run(lambda driver: driver.execute_script("return window.pwned")) == 1


async def test_only_loopback_resolves(
    chromium: Chromium, server: TestServer, received: list[str]
) -> None:
    # This machine's own name resolves (to a local address) for everyone but the browser.
    hostname = socket.gethostname()
    address = socket.gethostbyname(hostname)
    async with TestServer(_app(received), host=address) as by_name:
        url = f"http://{hostname}:{by_name.port}/form"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
        with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):
            await chromium.run(lambda driver: driver.get(url))
    # Loopback works, by address and by the name localhost.
    for host in ("127.0.0.1", "localhost"):
        await chromium.open(f"http://{host}:{server.port}/form")
        assert await chromium.text("h1") == "Add a credential"


def test_explicit_paths_no_selenium_manager_nothing_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_selenium_manager(*_args: object) -> dict[str, str]:
        raise AssertionError("Selenium Manager was invoked")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
    workdir = tmp_path / "work"
    with run_chromium(tmp_path / "artifacts", workdir=workdir) as browser:
        assert browser.driver.service.path == str(CHROMEDRIVER)
        assert browser.driver.options.binary_location == str(CHROMIUM)
        assert browser.driver.capabilities["browserName"] == "chrome"
        running = chromium_module._pids_using(workdir)
        assert running, "no process runs with the browser's profile directory"
    assert chromium_module._pids_using(workdir) == []
    assert [pid for pid in running if Path(f"/proc/{pid}").exists()] == []
