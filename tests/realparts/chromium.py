"""Drive a real headless Chromium (Debian's `chromium` and `chromium-driver`) for UI tests.

The browser is `/usr/bin/chromium`, driven by selenium through `/usr/bin/chromedriver`, both
from the Debian packages `deploy/bootstrap.sh` installs. Both paths are given explicitly, so
selenium never runs Selenium Manager and nothing is downloaded at run time. The browser runs
headless with a fresh profile in a temporary directory, a fixed window size, no background
networking, and a host resolver that resolves nothing but loopback: a page can reach a test
server on 127.0.0.1 (or localhost) and nothing else.

`run_chromium()` starts it and always quits it, killing whatever is left of the browser's
processes (found by their profile directory), so no stray `chromium` outlives it.

The helpers of `Chromium` are coroutines that run selenium's blocking calls in a worker
thread: the page may talk to an aiohttp server in the test's own event loop (a blocking
click that submits a form to it would otherwise wait for a server that cannot answer).
Every wait is explicit, with a timeout; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from selenium.common.exceptions import WebDriverException
from selenium.webdriver import Chrome, ChromeOptions, ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from .process import wait_for_interrupt

__all__ = [
    "ARTIFACTS_ENV",
    "CHROMEDRIVER",
    "CHROMIUM",
    "Chromium",
    "ChromiumError",
    "check_installed",
    "chromium_options",
    "run_chromium",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS_ENV = "LRS_GATEWAY_TEST_ARTIFACTS"
"""Where screenshots go (under `chromium/`) when set; else a pytest temporary directory."""

WINDOW_SIZE = (1280, 900)
DEFAULT_TIMEOUT = 10.0
"""Seconds any helper waits for an element or a condition."""
PAGE_LOAD_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

# Only loopback resolves: a page, a prefetch or a stray request to any other host fails.
HOST_RESOLVER_RULES = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    f"--host-resolver-rules={HOST_RESOLVER_RULES}",
    f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
)

T = TypeVar("T")


class ChromiumError(RuntimeError):
    """Chromium or chromedriver is missing, or the browser could not be started."""


def check_installed() -> None:
    """Raise `ChromiumError` saying what to do when the browser or its driver is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        raise ChromiumError(
            f"{' and '.join(missing)} missing. Run `bash deploy/bootstrap.sh` as root from the "
            "repository root (it installs the Debian packages chromium and chromium-driver)."
        )


def chromium_options(user_data_dir: Path) -> ChromeOptions:
    """Return the options of a headless, offline Chromium with its profile in `user_data_dir`."""
    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.page_load_strategy = "normal"
    return options


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug[:120] or "screenshot"


@dataclass
class Chromium:
    """A running headless Chromium and the helpers UI tests use (all waits explicit).

    Locators are CSS selectors. Every helper that waits does so for up to `timeout` s (or
    its own `within=` s) and then raises selenium's `TimeoutException`
    (`selenium.common.exceptions`) with a message saying what it waited for.
    """

    driver: Chrome
    artifacts_dir: Path
    """Screenshots are written here (it exists)."""
    timeout: float = DEFAULT_TIMEOUT
    _screenshots: int = field(default=0, init=False)

    async def run(self, call: Callable[[Chrome], T]) -> T:
        """Run `call(driver)` in a worker thread (anything the helpers below do not cover)."""
        return await asyncio.to_thread(call, self.driver)

    async def open(self, url: str) -> None:
        """Load `url` and wait for the page to load (`document.readyState` complete)."""
        await self.run(lambda driver: driver.get(url))
        await self.wait_for(
            lambda driver: driver.execute_script("return document.readyState") == "complete",
            message=f"{url} did not finish loading",
        )

    async def reset(self) -> None:
        """Forget the previous test: blank page, no cookies, no storage."""
        await self.run(lambda driver: driver.get("about:blank"))
        # Every site's cookies (delete_all_cookies reaches only the current page's site):
        # the OpenID provider's login session must not carry over to the next test.
        await self.run(lambda driver: driver.execute_cdp_cmd("Network.clearBrowserCookies", {}))

    async def wait_for(
        self,
        condition: Callable[[Chrome], Literal[False] | T],
        *,
        within: float | None = None,
        message: str = "",
    ) -> T:
        """Poll `condition(driver)` until it returns something truthy; return that.

        Raises `TimeoutException` (with `message`) after `within` s (default `self.timeout`).
        """
        wait = WebDriverWait(self.driver, self.timeout if within is None else within)
        return await self.run(lambda _driver: wait.until(condition, message))

    async def find(self, css: str, *, within: float | None = None) -> WebElement:
        """Wait until an element matches `css` and is visible; return the first one."""
        return await self.wait_for(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)),
            within=within,
            message=f"no visible element matches {css!r}",
        )

    async def find_all(self, css: str) -> list[WebElement]:
        """Every element matching `css` right now (possibly none: no wait)."""
        return await self.run(lambda driver: driver.find_elements(By.CSS_SELECTOR, css))

    async def fill(self, css: str, value: str, *, within: float | None = None) -> None:
        """Clear the form field matching `css` and type `value` into it."""
        element = await self.find(css, within=within)

        def type_value(_driver: Chrome) -> None:
            element.clear()
            element.send_keys(value)

        await self.run(type_value)
        await self.wait_for(
            lambda _driver: element.get_property("value") == value,
            within=within,
            message=f"{css!r} does not hold the value typed into it",
        )

    async def click(self, css: str, *, within: float | None = None) -> None:
        """Wait until the element matching `css` is clickable, then click it.

        A click that submits a form returns once the next page has loaded.
        """
        element = await self.wait_for(
            expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css)),
            within=within,
            message=f"no clickable element matches {css!r}",
        )
        await self.run(lambda _driver: element.click())

    async def text(self, css: str, *, within: float | None = None) -> str:
        """The rendered text (`innerText`) of the visible element matching `css`."""
        element = await self.find(css, within=within)
        return await self.run(lambda _driver: element.text)

    async def wait_for_text(self, css: str, text: str, *, within: float | None = None) -> None:
        """Wait until the element matching `css` contains `text` (rendered text)."""
        await self.wait_for(
            expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
            within=within,
            message=f"{css!r} never contained {text!r}",
        )

    async def wait_for_url(self, part: str, *, within: float | None = None) -> None:
        """Wait until the current URL contains `part` (e.g. after a redirect)."""
        await self.wait_for(
            expected_conditions.url_contains(part),
            within=within,
            message=f"the URL never contained {part!r}",
        )

    async def body_text(self) -> str:
        """The page's rendered text: `document.body.innerText`."""
        text = await self.run(
            lambda driver: driver.execute_script("return document.body.innerText")
        )
        return str(text)

    async def screenshot(self, name: str) -> Path:
        """Save a PNG of the viewport as `chromium-NNN-<name>.png` in `artifacts_dir`."""
        self._screenshots += 1
        path = self.artifacts_dir / f"chromium-{self._screenshots:03d}-{_slug(name)}.png"
        saved = await self.run(lambda driver: driver.get_screenshot_as_file(str(path)))
        if not saved:
            raise ChromiumError(f"chromedriver could not write the screenshot {path}")
        return path


def _pids_using(user_data_dir: Path) -> list[int]:
    """Processes whose command line names `user_data_dir` (this browser's, and only it)."""
    needle = os.fsencode(str(user_data_dir))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def _kill_leftovers(user_data_dir: Path, started: list[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGKILL this browser's processes still alive after `quit()`; wait until they are gone.

    `started` are its processes seen while it ran: once exited they may linger a moment as
    zombies (`[chromium] <defunct>`) until init reaps them; wait for that too.
    """
    if not Path("/proc").is_dir():
        return
    deadline = time.monotonic() + timeout
    while pids := _pids_using(user_data_dir):
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ChromiumError(f"Chromium processes {pids} did not exit")
        time.sleep(0.05)
    while any(Path(f"/proc/{pid}").exists() for pid in started):
        if time.monotonic() > deadline:
            return  # zombies only (their command lines are empty): nothing runs any more
        time.sleep(0.05)


@contextmanager
def run_chromium(
    artifacts_dir: Path, *, workdir: Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[Chromium]:
    """Start a headless Chromium, yield it, then quit it and kill what is left of it.

    `artifacts_dir` (created) receives screenshots. The profile and chromedriver's log
    (`chromedriver.log`) go to a fresh directory under `workdir` (default: the system's
    temporary directory), removed afterwards.
    """
    check_installed()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-", dir=workdir) as temp:
        user_data_dir = Path(temp) / "profile"
        user_data_dir.mkdir()
        log_file = Path(temp) / "chromedriver.log"
        service = ChromeService(executable_path=str(CHROMEDRIVER), log_output=str(log_file))
        started: list[int] = []
        try:
            try:
                driver = Chrome(service=service, options=chromium_options(user_data_dir))
            except WebDriverException as error:
                log = log_file.read_text(errors="replace")[-4000:] if log_file.exists() else ""
                raise ChromiumError(f"Chromium did not start: {error.msg}\n{log}") from error
            try:
                driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
                yield Chromium(driver=driver, artifacts_dir=artifacts_dir, timeout=timeout)
            finally:
                started = _pids_using(user_data_dir)
                with suppress(WebDriverException, OSError):
                    driver.quit()
        finally:
            _kill_leftovers(user_data_dir, started)


def main(argv: list[str]) -> int:
    """Start a browser, load a URL, save a screenshot, keep it until interrupted.

    From tests/: `../.venv/bin/python -m realparts.chromium URL [ARTIFACTS_DIR]`.
    """
    url = argv[1] if len(argv) > 1 else "about:blank"
    artifacts = Path(argv[2]) if len(argv) > 2 else Path.cwd() / "chromium-artifacts"

    async def show(browser: Chromium) -> Path:
        await browser.open(url)
        return await browser.screenshot("main")

    with run_chromium(artifacts) as browser:
        shot = asyncio.run(show(browser))
        sys.stdout.write(f"{url}: screenshot {shot}\n")
        sys.stdout.flush()
        wait_for_interrupt()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
