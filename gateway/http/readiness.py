"""Readiness: what /__heartbeat__ answers, also checked in the background for the metric.

Ready means clients can work: storage answered an authenticated request with 2xx using the
gateway's own credential, the auth backends are set up, the outbox answers. Forwarding
targets are reported, never a reason to be unready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from gateway.errors import GatewayError
from gateway.http.keys import (
    AUTHENTICATOR,
    CONFIG,
    METRICS,
    READINESS,
    STORAGE,
    VERSIONS,
)
from gateway.http.tenancy import all_forwarders
from gateway.upstream.storage import Occasionally, StorageClient, describe_credential
from gateway.xapi.versions import VERSION_HEADER

__all__ = [
    "INTERVAL",
    "PROBE_REQUEST_ID",
    "Check",
    "Readiness",
    "Report",
    "check_readiness",
    "judge_storage_answer",
    "keep_checking",
    "probe_storage",
    "readiness_loop",
]

log = logging.getLogger(__name__)
INTERVAL = 15.0  # seconds between background checks (the `lrs_gateway_ready` gauge)
# The probe's X-Request-ID: in storage's own logs it says what it is.
PROBE_REQUEST_ID = "lrs-gateway-readiness-probe"
# Per target, what readiness shows of the forwarder's figures (`state` once it has one).
_TARGET_FIELDS = ("state", "up", "backlog", "oldest_age")


@dataclass(frozen=True)
class Check:
    """One check's outcome; `state` is short and stable: each change of it is logged once."""

    ok: bool
    detail: str
    state: str = "ok"
    level: int = logging.WARNING  # how entering this (failed) state is logged


PASSED = Check(True, "ok")


@dataclass(frozen=True)
class Report:
    """All checks at one moment, and the forwarding targets' figures."""

    checks: dict[str, Check]
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Whether every check passed (targets never count)."""
        return all(check.ok for check in self.checks.values())

    def as_json(self) -> dict[str, Any]:
        """/__heartbeat__'s body: each check's detail ("ok" or what is wrong), the targets."""
        return {
            "status": "ok" if self.ready else "unavailable",
            "checks": {name: check.detail for name, check in self.checks.items()},
            "forwarding": {"targets": self.targets},
        }


def judge_storage_answer(status: int, storage: StorageClient, asked: str) -> Check:
    """What storage's HTTP status to the probe says about the gateway's configuration."""
    if 200 <= status < 300:
        return PASSED
    if status in (401, 403):
        return Check(
            False,
            f"the storage LRS refused the gateway's credential: {asked} "
            f"answered {status} to {describe_credential(storage)}; fix "
            "storage.basic_username/basic_password, or the credential's "
            "permissions in the LRS (clients get 502 meanwhile)",
            "refused",
            logging.ERROR,
        )
    if status == 404:
        return Check(
            False,
            f"storage URL looks wrong (no xAPI here): {asked} answered 404; "
            "storage.url must be the LRS's xAPI base, e.g. http://lrs:8100/xAPI/",
            "not_xapi",
            logging.ERROR,
        )
    return Check(False, f"{asked} answered HTTP {status}", f"answered {status}")


async def probe_storage(storage: StorageClient, version: str, within: float) -> Check:
    """Ask what every client needs, with the gateway's credential: `GET statements?limit=1`.

    An LRS's /about proves nothing here: it needs no credential, and Ralph answers 404
    there before looking at one.
    """
    asked = f"GET {storage.base_path}statements?limit=1"
    try:
        async with asyncio.timeout(within):
            async with storage.request(
                "GET",
                "statements",
                raw_query="limit=1",
                headers={VERSION_HEADER: version, "X-Request-ID": PROBE_REQUEST_ID},
            ) as answer:
                status = answer.status
    except TimeoutError:
        return Check(
            False,
            f"the storage LRS did not answer {asked} within {within:g} s (storage.probe_timeout)",
            "timeout",
        )
    except GatewayError as error:
        return Check(False, f"{error.message} ({asked})", "unreachable")
    return judge_storage_answer(status, storage, asked)


async def _forwarding(app: web.Application, within: float) -> tuple[Check | None, dict[str, Any]]:
    """The outbox's check (it answered) and each target's figures; (None, {}) without one."""
    forwarders = all_forwarders(app)
    if not forwarders:
        return None, {}
    stats: dict[str, Any] = {}
    try:
        async with asyncio.timeout(within):
            for forwarder in forwarders:  # every tenant's outbox answers, or writes fail
                found = await forwarder.status()
                mine = set(forwarder.target_names)
                stats |= {n: f for n, f in found.items() if n in mine or n not in stats}
    except TimeoutError:
        return Check(False, f"the outbox did not answer within {within:g} s", "timeout"), {}
    except Exception as error:  # any store failure means statement writes fail too
        return Check(
            False,
            f"the outbox failed: {type(error).__name__}: {error}",
            f"failed {type(error).__name__}",
            logging.ERROR,
        ), {}
    targets = {
        name: {key: value for key, value in asdict(figures).items() if key in _TARGET_FIELDS}
        for name, figures in stats.items()
    }
    return PASSED, targets


class Readiness:
    """Runs the checks (callers arriving meanwhile share one run), sets the gauge, logs changes.

    Each check's change of state is logged once, not at every probe.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._states: dict[str, str] = {}
        self._running: asyncio.Future[Report] | None = None

    async def check(self) -> Report:
        """A fresh report (one storage request however many probes ask at once)."""
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
            self._running.add_done_callback(self._finished)
        return await asyncio.shield(self._running)

    def _finished(self, done: asyncio.Future[Report]) -> None:
        self._running = None
        if not done.cancelled():
            done.exception()  # its callers have it; no "never retrieved" warning

    def close(self) -> None:
        """Stop a check still running (shutdown)."""
        if self._running is not None:
            self._running.cancel()

    async def _check(self) -> Report:
        app = self._app
        within = app[CONFIG].storage.probe_timeout
        storage, (store, targets) = await asyncio.gather(
            probe_storage(app[STORAGE], app[VERSIONS].default, within), _forwarding(app, within)
        )
        problems = "; ".join(app[AUTHENTICATOR].readiness_problems())
        checks = {
            "storage": storage,
            "auth": Check(False, problems, problems) if problems else PASSED,
        }
        if store is not None:
            checks["outbox"] = store
        report = Report(checks, targets)
        app[METRICS].ready.set(1 if report.ready else 0)
        self._log_changes(checks)
        return report

    def _log_changes(self, checks: dict[str, Check]) -> None:
        for name, check in checks.items():
            before = self._states.get(name)  # None: the first check since start
            if check.state == before:
                continue
            self._states[name] = check.state
            if not check.ok:
                log.log(check.level, "not ready: %s: %s", name, check.detail)
            elif before is not None:
                log.info("readiness: the %s check passes again", name)


async def check_readiness(app: web.Application) -> Report:
    """The readiness report now; also sets the `ready` gauge."""
    return await app[READINESS].check()


async def keep_checking(
    check: Callable[[], Awaitable[object]],
    *,
    on_failure: Callable[[], None],
    interval: float = INTERVAL,
    failures: Occasionally | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run `check` every `interval` seconds until cancelled.

    A check that raises is logged (the first time, then once a minute with how many) and
    `on_failure` is called: the gauge must not keep saying "ready" on its own.
    """
    failures = failures if failures is not None else Occasionally(60.0)
    while True:
        try:
            await check()
        except Exception:
            on_failure()
            count = failures.due()
            if count is not None:
                log.exception(
                    "the background readiness check failed (%d time(s) since the "
                    "last line like this); lrs_gateway_ready says 0 meanwhile",
                    count,
                )
        await sleep(interval)


async def readiness_loop(app: web.Application) -> AsyncIterator[None]:
    """Keep the gauge current even when nothing probes /__heartbeat__ (systemd installs)."""
    readiness = Readiness(app)
    app[READINESS] = readiness

    def failed() -> None:
        app[METRICS].ready.set(0)

    task = asyncio.create_task(keep_checking(readiness.check, on_failure=failed), name="readiness")
    yield
    task.cancel()
    readiness.close()
    with contextlib.suppress(asyncio.CancelledError):
        await task
